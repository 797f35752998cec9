/* put: CA puts from one client, as fast as the server takes them or at a set rate.
 *
 *   put --pattern 'P:bench%d_f1' --n 1000 --puts M [--mode nowait|wait|rate|create]
 *       [--rate R] [--value seq|time] [--first-value V] [--connect-timeout-s 30]
 *
 * Modes:
 *   nowait  ca_array_put (no callback) round-robin over the N PVs, then one read of
 *           the first PV: CA answers requests of a circuit in order, so when that read
 *           returns, the server has handled every put before it. puts/s = M / (start to
 *           that answer).
 *   wait    ca_array_put_callback and wait for the completion before the next put (what
 *           `caput -c` or pyepics `wait=True` do): one round trip per put.
 *   rate    paced puts at R per second, one flush each (the latency scenario's source).
 *   create  the N names are new: time from creating the channels to the completion of a
 *           put (with callback) to each: PVs created per second over CA.
 * --value time puts the CLOCK_REALTIME send time as the value (for latency).
 *
 * Callbacks are preemptive (libca's own thread) so that `wait` sleeps on an event instead
 * of spinning, which would steal a core from the server on a 2-core machine.
 */
#include <cadef.h>
#include <epicsEvent.h>
#include <epicsMutex.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

#define CLIENT "C put (libca)"

static struct {
    chid *channels;
    long n;
    volatile long connected, completions, failures, exceptions;
    epicsEventId done;
    epicsMutexId lock;
    long target; /* completions that signal `done` */
} P;

static void on_connection(struct connection_handler_args args)
{
    if (args.op == CA_OP_CONN_UP) {
        epicsMutexLock(P.lock);
        P.connected++;
        int all = P.connected == P.n;
        epicsMutexUnlock(P.lock);
        if (all)
            epicsEventSignal(P.done);
    }
}

static void on_completion(struct event_handler_args args)
{
    epicsMutexLock(P.lock);
    P.completions++;
    if (args.status != ECA_NORMAL)
        P.failures++;
    int all = P.completions >= P.target;
    epicsMutexUnlock(P.lock);
    if (all)
        epicsEventSignal(P.done);
}

static void on_exception(struct exception_handler_args args)
{
    (void)args;
    epicsMutexLock(P.lock);
    P.exceptions++; /* a put without callback that the server refused */
    epicsMutexUnlock(P.lock);
}

/* Wait until `done` is signalled; false after `timeout` seconds. */
static int wait_done(double timeout)
{
    return epicsEventWaitWithTimeout(P.done, timeout) == epicsEventWaitOK;
}

static void create_channels(const char *pattern)
{
    for (long i = 0; i < P.n; i++) {
        char name[256];
        pv_name(name, sizeof name, pattern, i);
        if (ca_create_channel(name, on_connection, NULL, CA_PRIORITY_DEFAULT,
                              &P.channels[i]) != ECA_NORMAL)
            fail(CLIENT, "cannot create channel %s", name);
    }
    ca_flush_io();
}

int main(int argc, char **argv)
{
    const char *pattern = opt_str(argc, argv, "--pattern", NULL);
    const char *mode = opt_str(argc, argv, "--mode", "nowait");
    const char *value_kind = opt_str(argc, argv, "--value", "seq");
    P.n = (long)opt_num(argc, argv, "--n", 1);
    long puts = (long)opt_num(argc, argv, "--puts", P.n);
    double rate = opt_num(argc, argv, "--rate", 1000);
    double value = opt_num(argc, argv, "--first-value", 1);
    double connect_timeout = opt_num(argc, argv, "--connect-timeout-s", 30);
    int use_time = strcmp(value_kind, "time") == 0;
    if (!pattern || P.n < 1)
        fail(CLIENT, "usage: put --pattern FMT --n N --puts M [options]");

    P.done = epicsEventCreate(epicsEventEmpty);
    P.lock = epicsMutexCreate();
    P.channels = calloc((size_t)P.n, sizeof *P.channels);
    if (ca_context_create(ca_enable_preemptive_callback) != ECA_NORMAL)
        fail(CLIENT, "cannot create a CA context");
    ca_add_exception_event(on_exception, NULL);

    double start = now_realtime();
    create_channels(pattern);
    if (!wait_done(connect_timeout))
        fail(CLIENT, "only %ld of %ld channels connected after %g s", P.connected, P.n,
             connect_timeout);
    double connect_s = now_realtime() - start;

    double t0 = now_realtime(), t1;
    long done_puts = 0;
    if (strcmp(mode, "create") == 0) {
        /* Timed from before the channels were created: searching and connecting a new
         * name is most of what creating a PV over CA costs. */
        t0 = start;
        P.target = P.n;
        for (long i = 0; i < P.n; i++, value++)
            ca_array_put_callback(DBR_DOUBLE, 1, P.channels[i], &value, on_completion, NULL);
        ca_flush_io();
        if (!wait_done(connect_timeout))
            fail(CLIENT, "only %ld of %ld put completions", P.completions, P.n);
        done_puts = P.n;
    } else if (strcmp(mode, "wait") == 0) {
        for (long i = 0; i < puts; i++, value++) {
            P.target = i + 1;
            ca_array_put_callback(DBR_DOUBLE, 1, P.channels[i % P.n], &value, on_completion,
                                  NULL);
            ca_flush_io();
            if (!wait_done(10.0))
                fail(CLIENT, "put %ld got no completion within 10 s", i);
        }
        done_puts = puts;
    } else if (strcmp(mode, "nowait") == 0 || strcmp(mode, "rate") == 0) {
        int paced = strcmp(mode, "rate") == 0;
        double next = now_monotonic();
        for (long i = 0; i < puts; i++, value++) {
            if (paced) {
                next += 1.0 / rate;
                sleep_until_monotonic(next);
            }
            double v = use_time ? now_realtime() : value;
            int status = ca_array_put(DBR_DOUBLE, 1, P.channels[i % P.n], &v);
            if (status != ECA_NORMAL)
                fail(CLIENT, "ca_array_put: %s", ca_message(status));
            if (paced)
                ca_flush_io();
        }
        /* The answer to this read comes after the server has handled every put. */
        P.target = 1;
        double readback;
        ca_array_get_callback(DBR_DOUBLE, 1, P.channels[0], on_completion, &readback);
        ca_flush_io();
        if (!wait_done(60.0))
            fail(CLIENT, "no answer to the final read within 60 s");
        done_puts = puts;
    } else {
        fail(CLIENT, "unknown mode %s", mode);
    }
    t1 = now_realtime();

    printf("{\"client\": \"%s\", \"mode\": \"%s\", \"pvs\": %ld, \"puts\": %ld, "
           "\"connect_s\": %.6f, \"start\": %.6f, \"end\": %.6f, \"elapsed_s\": %.6f, "
           "\"rate\": %.3f, \"failures\": %ld, \"exceptions\": %ld}\n",
           CLIENT, mode, P.n, done_puts, connect_s, t0, t1, t1 - t0,
           t1 > t0 ? (double)done_puts / (t1 - t0) : 0.0, (long)P.failures,
           (long)P.exceptions);
    fflush(stdout);
    _exit(0);
}
