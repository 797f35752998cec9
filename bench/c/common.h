/* Helpers shared by the bench's C clients (monitor, put, connect, get).
 *
 * The clients are deliberately tiny: they exist so that the CA *client* is never the
 * bottleneck of a figure (a Python client tops out far below what pcas can send).
 * Every client prints exactly one JSON object on stdout when it is done, so the Python
 * harness parses results instead of scraping text. Times are CLOCK_REALTIME seconds
 * (the clock Python's time.time() reads), so a value a pusher stamps with time.time()
 * can be subtracted from an arrival time measured here: same host, same clock.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <stddef.h>
#include <stdio.h>

/* Seconds since the POSIX epoch, CLOCK_REALTIME (same clock as time.time()). */
double now_realtime(void);
/* Seconds on CLOCK_MONOTONIC, for pacing and timeouts. */
double now_monotonic(void);
/* Sleep until the CLOCK_MONOTONIC time `when` (absolute), so pacing does not drift. */
void sleep_until_monotonic(double when);

/* The name of PV number `index`: `pattern` is a printf format with one %d (or %ld). */
void pv_name(char *out, size_t size, const char *pattern, long index);

/* A growable array of doubles (latency samples). */
typedef struct {
    double *data;
    size_t len, cap, limit; /* limit: samples beyond it are counted but not kept */
    size_t dropped;
} samples_t;

void samples_init(samples_t *s, size_t limit);
void samples_add(samples_t *s, double value);
/* Sort the samples and print them as a JSON object of percentiles and a histogram
 * (values in seconds are printed in milliseconds, keys suffixed _ms). */
void samples_print_json(FILE *out, samples_t *s);

/* Option parsing: find "--name" in argv and return the next argument, or `fallback`. */
const char *opt_str(int argc, char **argv, const char *name, const char *fallback);
double opt_num(int argc, char **argv, const char *name, double fallback);
int opt_flag(int argc, char **argv, const char *name);

/* Print a JSON string literal (quoted, escaped). */
void json_string(FILE *out, const char *text);

/* Exit with a JSON error object on stdout, so the harness always gets JSON. */
void fail(const char *client, const char *fmt, ...);

#endif
