/* get: read PVs with ca_array_get, once, repeatedly (timing each read), or until a value.
 *
 *   get --pv NAME [--pv NAME ...]                     read each once, print the values
 *   get --pv NAME --reads R [--interval-ms I]         time R reads (latency of CA service)
 *   get --pv NAME --until V [--timeout-s S] [--poll-ms P]
 *                                                     read until the value is >= V; print
 *                                                     when (CLOCK_REALTIME) that was seen
 *
 * Every read is DBR_DOUBLE, one element, ca_array_get + ca_pend_io: one request, one
 * round trip. A read that is not answered within 5 s counts as failed.
 */
#include <cadef.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

#define CLIENT "C get (libca)"
#define MAX_PVS 64

static int read_one(chid channel, double *value)
{
    if (ca_array_get(DBR_DOUBLE, 1, channel, value) != ECA_NORMAL)
        return 0;
    return ca_pend_io(5.0) == ECA_NORMAL;
}

int main(int argc, char **argv)
{
    const char *names[MAX_PVS];
    chid channels[MAX_PVS];
    int n = 0;
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--pv") == 0 && n < MAX_PVS)
            names[n++] = argv[++i];
    long reads = (long)opt_num(argc, argv, "--reads", 0);
    double interval = opt_num(argc, argv, "--interval-ms", 10) / 1e3;
    const char *until_text = opt_str(argc, argv, "--until", NULL);
    double timeout = opt_num(argc, argv, "--timeout-s", 30);
    double poll = opt_num(argc, argv, "--poll-ms", 5) / 1e3;
    if (n == 0)
        fail(CLIENT, "usage: get --pv NAME [...] [--reads R | --until V]");

    if (ca_context_create(ca_disable_preemptive_callback) != ECA_NORMAL)
        fail(CLIENT, "cannot create a CA context");
    for (int i = 0; i < n; i++)
        ca_create_channel(names[i], NULL, NULL, CA_PRIORITY_DEFAULT, &channels[i]);
    if (ca_pend_io(10.0) != ECA_NORMAL)
        fail(CLIENT, "cannot connect to %s", names[0]);

    if (until_text) {
        printf("READY\n");
        fflush(stdout);
        double target = strtod(until_text, NULL), value = NAN;
        double t0 = now_monotonic();
        long count = 0, over_20ms = 0;
        int reached = 0;
        samples_t samples;
        samples_init(&samples, 10000000);
        while (now_monotonic() - t0 < timeout) {
            count++;
            double t = now_monotonic();
            int ok = read_one(channels[0], &value);
            double dt = now_monotonic() - t;
            samples_add(&samples, dt);
            if (dt > 0.020)
                over_20ms++;
            if (ok && value >= target) {
                reached = 1;
                break;
            }
            sleep_until_monotonic(now_monotonic() + poll);
        }
        printf("{\"client\": \"%s\", \"pv\": ", CLIENT);
        json_string(stdout, names[0]);
        printf(", \"reached\": %s, \"t_reached\": %.6f, \"value\": %.17g, \"reads\": %ld, "
               "\"over_20ms\": %ld, \"latency\": ",
               reached ? "true" : "false", now_realtime(), isfinite(value) ? value : -1.0,
               count, over_20ms);
        samples_print_json(stdout, &samples);
        printf("}\n");
    } else if (reads > 0) {
        samples_t samples;
        samples_init(&samples, (size_t)reads);
        long failed = 0, over_20ms = 0;
        double value = NAN, next = now_monotonic();
        for (long r = 0; r < reads; r++) {
            double t = now_monotonic();
            if (!read_one(channels[0], &value)) {
                failed++;
                continue;
            }
            double dt = now_monotonic() - t;
            if (dt > 0.020)
                over_20ms++;
            samples_add(&samples, dt);
            next += interval;
            sleep_until_monotonic(next > now_monotonic() ? next : now_monotonic());
        }
        printf("{\"client\": \"%s\", \"pv\": ", CLIENT);
        json_string(stdout, names[0]);
        printf(", \"reads\": %ld, \"failed\": %ld, \"over_20ms\": %ld, \"latency\": ", reads,
               failed, over_20ms);
        samples_print_json(stdout, &samples);
        printf("}\n");
    } else {
        printf("{\"client\": \"%s\", \"values\": {", CLIENT);
        for (int i = 0; i < n; i++) {
            double value = NAN;
            int ok = read_one(channels[i], &value);
            printf(i ? ", " : "");
            json_string(stdout, names[i]);
            if (ok && isfinite(value))
                printf(": %.17g", value);
            else
                printf(": null");
        }
        printf("}}\n");
    }
    fflush(stdout);
    _exit(0);
}
