/* See common.h. */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double now_realtime(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

double now_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void sleep_until_monotonic(double when)
{
    struct timespec ts;
    ts.tv_sec = (time_t)when;
    ts.tv_nsec = (long)((when - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec += 1;
        ts.tv_nsec -= 1000000000L;
    }
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

void pv_name(char *out, size_t size, const char *pattern, long index)
{
    /* The pattern comes from the harness, never from a user of relayd. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    snprintf(out, size, pattern, (int)index);
#pragma GCC diagnostic pop
}

void samples_init(samples_t *s, size_t limit)
{
    s->data = NULL;
    s->len = s->cap = s->dropped = 0;
    s->limit = limit;
}

void samples_add(samples_t *s, double value)
{
    if (s->len >= s->limit) {
        s->dropped++;
        return;
    }
    if (s->len == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4096;
        double *data = realloc(s->data, cap * sizeof *data);
        if (!data) {
            s->dropped++;
            return;
        }
        s->data = data;
        s->cap = cap;
    }
    s->data[s->len++] = value;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Linear interpolation between closest ranks (numpy's default "linear" method). */
static double percentile(const double *sorted, size_t n, double q)
{
    if (n == 0)
        return NAN;
    double rank = q / 100.0 * (double)(n - 1);
    size_t low = (size_t)floor(rank);
    size_t high = low + 1 < n ? low + 1 : low;
    double frac = rank - (double)low;
    return sorted[low] + (sorted[high] - sorted[low]) * frac;
}

static void json_number(FILE *out, double value)
{
    if (isfinite(value))
        fprintf(out, "%.6g", value);
    else
        fputs("null", out);
}

void samples_print_json(FILE *out, samples_t *s)
{
    static const double edges_ms[] = {0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 20, 50, 100};
    const size_t nedges = sizeof edges_ms / sizeof edges_ms[0];
    size_t counts[sizeof edges_ms / sizeof edges_ms[0] + 1] = {0};
    static const double qs[] = {50, 90, 99, 99.9};
    static const char *qnames[] = {"p50_ms", "p90_ms", "p99_ms", "p999_ms"};
    double sum = 0;

    qsort(s->data, s->len, sizeof *s->data, compare_doubles);
    for (size_t i = 0; i < s->len; i++) {
        double ms = s->data[i] * 1e3;
        size_t b = 0;
        while (b < nedges && ms > edges_ms[b])
            b++;
        counts[b]++;
        sum += s->data[i];
    }
    fprintf(out, "{\"n\": %zu, \"not_kept\": %zu", s->len, s->dropped);
    for (size_t q = 0; q < sizeof qs / sizeof qs[0]; q++) {
        fprintf(out, ", \"%s\": ", qnames[q]);
        json_number(out, percentile(s->data, s->len, qs[q]) * 1e3);
    }
    fputs(", \"min_ms\": ", out);
    json_number(out, s->len ? s->data[0] * 1e3 : NAN);
    fputs(", \"max_ms\": ", out);
    json_number(out, s->len ? s->data[s->len - 1] * 1e3 : NAN);
    fputs(", \"mean_ms\": ", out);
    json_number(out, s->len ? sum / (double)s->len * 1e3 : NAN);
    fputs(", \"histogram_ms\": {", out);
    for (size_t b = 0; b <= nedges; b++) {
        if (b < nedges)
            fprintf(out, "%s\"<=%g\": %zu", b ? ", " : "", edges_ms[b], counts[b]);
        else
            fprintf(out, ", \">%g\": %zu", edges_ms[nedges - 1], counts[b]);
    }
    fputs("}}", out);
}

const char *opt_str(int argc, char **argv, const char *name, const char *fallback)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return fallback;
}

double opt_num(int argc, char **argv, const char *name, double fallback)
{
    const char *text = opt_str(argc, argv, name, NULL);
    return text ? strtod(text, NULL) : fallback;
}

int opt_flag(int argc, char **argv, const char *name)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return 1;
    return 0;
}

void json_string(FILE *out, const char *text)
{
    fputc('"', out);
    for (const char *p = text; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(out, "\\%c", *p);
        else if ((unsigned char)*p < 0x20)
            fprintf(out, "\\u%04x", (unsigned char)*p);
        else
            fputc(*p, out);
    }
    fputc('"', out);
}

void fail(const char *client, const char *fmt, ...)
{
    char text[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    printf("{\"client\": ");
    json_string(stdout, client);
    printf(", \"error\": ");
    json_string(stdout, text);
    printf("}\n");
    fflush(stdout);
    exit(2);
}
