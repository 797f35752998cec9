/* connect: create N channels and time until every one is connected.
 *
 *   connect --pattern 'P:scale%d_f1' --n 100000 [--timeout-s 60]
 *
 * The time runs from before the first ca_create_channel to the last connection
 * callback: searches (UDP, in libca's batches), the TCP circuit, and one create-channel
 * exchange per PV. Prints one JSON object.
 */
#include <cadef.h>
#include <stdlib.h>
#include <unistd.h>

#include "common.h"

#define CLIENT "C connect (libca)"

static long connected;

static void on_connection(struct connection_handler_args args)
{
    if (args.op == CA_OP_CONN_UP)
        connected++;
}

int main(int argc, char **argv)
{
    const char *pattern = opt_str(argc, argv, "--pattern", NULL);
    long n = (long)opt_num(argc, argv, "--n", 1);
    double timeout = opt_num(argc, argv, "--timeout-s", 60);
    if (!pattern || n < 1)
        fail(CLIENT, "usage: connect --pattern FMT --n N [--timeout-s S]");
    if (ca_context_create(ca_disable_preemptive_callback) != ECA_NORMAL)
        fail(CLIENT, "cannot create a CA context");
    chid *channels = calloc((size_t)n, sizeof *channels);

    double t0 = now_monotonic();
    for (long i = 0; i < n; i++) {
        char name[256];
        pv_name(name, sizeof name, pattern, i);
        if (ca_create_channel(name, on_connection, NULL, CA_PRIORITY_DEFAULT, &channels[i])
            != ECA_NORMAL)
            fail(CLIENT, "cannot create channel %s", name);
    }
    while (connected < n && now_monotonic() - t0 < timeout)
        ca_pend_event(0.001);
    double elapsed = now_monotonic() - t0;

    printf("{\"client\": \"%s\", \"pvs\": %ld, \"connected\": %ld, \"elapsed_s\": %.6f, "
           "\"complete\": %s}\n",
           CLIENT, n, connected, elapsed, connected == n ? "true" : "false");
    fflush(stdout);
    _exit(0);
}
