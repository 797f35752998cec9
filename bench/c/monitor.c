/* monitor: subscribe to N PVs and count the monitor events that arrive.
 *
 *   monitor --pattern 'P:bench%d_f1' --n 1000 [--count 1] [--quiet-ms 500]
 *           [--deadline-s 60] [--expect E] [--until-value V] [--latency]
 *           [--connect-timeout-s 30]
 *
 * Connects every channel, subscribes with DBR_TIME_DOUBLE (`count` elements,
 * DBE_VALUE), waits for the one initial event each subscription gets, then prints
 * "READY <connect seconds>" on a line of its own: the harness starts the load only then,
 * so initial events are never counted. From then on it counts events until `expect`
 * events have arrived, or every PV has had an event whose value (first element) is at
 * least `until-value` (the pusher's last round: how a run that conflates or loses events
 * still ends at once), or the stream has been quiet for `quiet-ms` after the first event
 * (something was lost), or `deadline-s` has passed, and prints one JSON object: events, first/last arrival
 * (CLOCK_REALTIME), the last value (first element) of every PV, and with --latency the
 * distribution of (arrival - value): the pusher puts its send time (time.time()) as the
 * value, so this is the push -> event latency on one host clock.
 *
 * Callbacks are non-preemptive (run inside ca_pend_event), so there is no locking.
 */
#include <cadef.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

#define CLIENT "C monitor (libca)"

typedef struct {
    chid channel;
    evid subscription;
    long events;
    double last_value;
    int initial_seen, reached;
} pv_t;

static struct {
    pv_t *pvs;
    long n, count;
    long connected, disconnects, initial_events, errors, reached;
    double until_value;
    int until;
    int counting, latency;
    long events;
    double first, last;
    samples_t samples;
} M;

static void on_event(struct event_handler_args args)
{
    double arrival = now_realtime();
    pv_t *pv = args.usr;
    if (args.status != ECA_NORMAL || args.dbr == NULL) {
        M.errors++;
        return;
    }
    const struct dbr_time_double *value = args.dbr;
    pv->last_value = value->value;
    if (!M.counting) {
        if (!pv->initial_seen) {
            pv->initial_seen = 1;
            M.initial_events++;
        }
        return;
    }
    if (M.events == 0)
        M.first = arrival;
    M.last = arrival;
    M.events++;
    pv->events++;
    if (M.until && !pv->reached && value->value >= M.until_value) {
        pv->reached = 1;
        M.reached++;
    }
    if (M.latency)
        samples_add(&M.samples, arrival - value->value);
}

static void on_connection(struct connection_handler_args args)
{
    pv_t *pv = ca_puser(args.chid);
    if (args.op != CA_OP_CONN_UP) {
        M.disconnects++;
        return;
    }
    M.connected++;
    if (pv->subscription == NULL) {
        int status = ca_create_subscription(DBR_TIME_DOUBLE, M.count, args.chid, DBE_VALUE,
                                            on_event, pv, &pv->subscription);
        if (status != ECA_NORMAL)
            M.errors++;
    }
}

int main(int argc, char **argv)
{
    const char *pattern = opt_str(argc, argv, "--pattern", NULL);
    M.n = (long)opt_num(argc, argv, "--n", 1);
    M.count = (long)opt_num(argc, argv, "--count", 1);
    double quiet = opt_num(argc, argv, "--quiet-ms", 500) / 1e3;
    double deadline_s = opt_num(argc, argv, "--deadline-s", 60);
    double connect_timeout = opt_num(argc, argv, "--connect-timeout-s", 30);
    long expect = (long)opt_num(argc, argv, "--expect", 0);
    M.latency = opt_flag(argc, argv, "--latency");
    M.until = opt_str(argc, argv, "--until-value", NULL) != NULL;
    M.until_value = opt_num(argc, argv, "--until-value", 0);
    if (!pattern || M.n < 1)
        fail(CLIENT, "usage: monitor --pattern FMT --n N [options]");
    samples_init(&M.samples, 20000000);

    if (ca_context_create(ca_disable_preemptive_callback) != ECA_NORMAL)
        fail(CLIENT, "cannot create a CA context");
    M.pvs = calloc((size_t)M.n, sizeof *M.pvs);
    double t0 = now_monotonic();
    for (long i = 0; i < M.n; i++) {
        char name[256];
        pv_name(name, sizeof name, pattern, i);
        if (ca_create_channel(name, on_connection, &M.pvs[i], CA_PRIORITY_DEFAULT,
                              &M.pvs[i].channel) != ECA_NORMAL)
            fail(CLIENT, "cannot create channel %s", name);
    }
    while (M.connected < M.n || M.initial_events < M.n) {
        ca_pend_event(0.002);
        if (now_monotonic() - t0 > connect_timeout)
            fail(CLIENT, "only %ld of %ld channels connected and %ld initial events after %g s",
                 M.connected, M.n, M.initial_events, connect_timeout);
    }
    double connect_s = now_monotonic() - t0;
    M.counting = 1;
    printf("READY %.6f\n", connect_s);
    fflush(stdout);

    const char *stopped = "deadline";
    double deadline = now_monotonic() + deadline_s;
    for (;;) {
        ca_pend_event(0.002);
        if (expect > 0 && M.events >= expect) {
            stopped = "expect";
            break;
        }
        if (M.until && M.reached >= M.n) {
            stopped = "until-value";
            break;
        }
        if (M.events > 0 && now_realtime() - M.last > quiet) {
            stopped = "quiet";
            break;
        }
        if (now_monotonic() > deadline)
            break;
    }

    double span = M.last - M.first;
    printf("{\"client\": \"%s\", \"pvs\": %ld, \"count\": %ld, \"connected\": %ld, "
           "\"connect_s\": %.6f, \"events\": %ld, \"first\": %.6f, \"last\": %.6f, "
           "\"span_s\": %.6f, \"rate\": %.3f, \"bytes\": %.0f, \"stopped\": \"%s\", "
           "\"disconnects\": %ld, \"errors\": %ld",
           CLIENT, M.n, M.count, M.connected, connect_s, M.events, M.first, M.last, span,
           span > 0 ? (double)M.events / span : 0.0, (double)M.events * (double)M.count * 8.0,
           stopped, M.disconnects, M.errors);
    if (M.n <= 100000) {
        printf(", \"last_values\": [");
        for (long i = 0; i < M.n; i++)
            printf(i ? ", %.17g" : "%.17g", isfinite(M.pvs[i].last_value) ? M.pvs[i].last_value : 0.0);
        printf("], \"pv_events\": [");
        for (long i = 0; i < M.n; i++)
            printf(i ? ", %ld" : "%ld", M.pvs[i].events);
        printf("]");
    }
    if (M.latency) {
        printf(", \"latency\": ");
        samples_print_json(stdout, &M.samples);
    }
    printf("}\n");
    fflush(stdout);
    /* Exit without tearing down 1000s of channels one by one: the OS closes the socket. */
    _exit(0);
}
