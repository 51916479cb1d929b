/*
 * Where Winnow's direct round trip loses to pyzmq's, measured with libzmq alone.
 *
 * `winnow bench wire` compares Winnow with pyzmq REQ/REP; the two differ in language, in how the
 * receiving thread waits, in frame layout and in the work around each message. This program
 * takes them apart with no interpreter in the way, over tcp loopback, 2 KB payloads:
 *
 *   pattern ROUNDS   A ROUTER echo server and a DEALER client, both in C, four ways: waiting
 *                    inside libzmq's receive ("block", as REQ/REP and Winnow's broker do) or
 *                    Winnow's way ("fd": a non-blocking receive until EAGAIN, then the thread's
 *                    own poll on ZMQ_FD beside an idle pipe), with 1 frame per message or 2 (a
 *                    40-byte head and the payload, Winnow's layout).
 *   servers ROUNDS WINNOW [WINNOW_B]
 *                    The same C client, speaking Winnow's request frames, against a C echo
 *                    server that answers them the way Winnow's does (blocking receive, reply
 *                    head with the request id) and against Winnow's own echo server
 *                    (`WINNOW bench wire --serve-echo`, an RPCServer with an inline Echo): what
 *                    Winnow's server adds to a round trip, and the CPU time the server's
 *                    application threads and libzmq's threads spend per call (from
 *                    the stat file of each of its threads under /proc, summed over all rounds).
 *                    With WINNOW_B, a second build's server joins every round.
 *   clients ROUNDS WINNOW
 *                    The other side: against that C server, the C client and Winnow's client
 *                    (`WINNOW bench wire --time-echo-at`, an RPCClient whose calling task runs on
 *                    its receiving thread, as the bench's direct rows), with the CPU time per call
 *                    of each client's application threads (libzmq's not counted).
 *   serve PORT       Only the C echo server of `servers`.
 *   call ENDPOINT COUNT
 *                    Only the C client of `servers`: COUNT round trips, prints the p50.
 *
 * Every round runs each variant once, in an order rotated from round to round (whatever runs
 * first in a round ran measurably slower here); each variant's p50 is kept per round, and the
 * summary gives the median over rounds of the first variant's p50 divided by each variant's
 * (below 1: slower than the first) and how many rounds each was the slower in.
 *
 * Built and run by scripts/reference/wire-transport.
 */
#include <zmq.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { SIZE = 2048, COUNT = 2000, WARMUP = 500, MAX_ROUNDS = 200 };
/* Calls per client and round in `clients`: CPU time is charged in 10 ms ticks, and a Winnow
 * client's figure from 2,000 calls came out up to three times its figure from 20,000. */
enum { CLIENT_COUNT = 10000 };

static int free_port(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof a;
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(s, (struct sockaddr *)&a, &length) != 0) {
        perror("free_port");
        exit(1);
    }
    close(s);
    return ntohs(a.sin_port);
}

static long long monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static long long wall_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t.tv_sec * 1000000LL + t.tv_nsec / 1000;
}

static int compare_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static int compare_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double p50_us(long long *samples, int count) {
    qsort(samples, count, sizeof *samples, compare_ll);
    return samples[count / 2] / 1000.0;
}

/* A ROUTER bound to, or a DEALER connected to, tcp loopback, in a context of its own. */
typedef struct { void *context, *socket; } endpoint_socket;

static endpoint_socket open_socket(int type, const char *endpoint) {
    endpoint_socket s = {zmq_ctx_new(), NULL};
    s.socket = zmq_socket(s.context, type);
    int rc = type == ZMQ_ROUTER ? zmq_bind(s.socket, endpoint) : zmq_connect(s.socket, endpoint);
    if (rc != 0) { perror(endpoint); exit(1); }
    return s;
}

static const char *loopback(int port) {
    static char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    return endpoint;
}

static void close_socket(endpoint_socket s) {
    int zero = 0;
    zmq_setsockopt(s.socket, ZMQ_LINGER, &zero, sizeof zero);
    zmq_close(s.socket);
    zmq_ctx_term(s.context);
}

/* ---- pattern: the receive wait and the frame count ---- */

typedef struct { zmq_msg_t parts[4]; int n; } message;

static void receive(void *sock, int fd_wait, struct pollfd *wait_on, message *m) {
    m->n = 0;
    for (;;) {
        zmq_msg_init(&m->parts[m->n]);
        int flags = (fd_wait && m->n == 0) ? ZMQ_DONTWAIT : 0;
        if (zmq_msg_recv(&m->parts[m->n], sock, flags) < 0) {
            zmq_msg_close(&m->parts[m->n]);
            /* ZMQ_FD is edge-triggered: only EAGAIN re-arms it, so try before sleeping. */
            if (fd_wait && m->n == 0 && errno == EAGAIN) { poll(wait_on, 2, -1); continue; }
            perror("zmq_msg_recv");
            exit(1);
        }
        int more = zmq_msg_more(&m->parts[m->n]);
        m->n++;
        if (!more) return;
    }
}

static void release(message *m) {
    for (int i = 0; i < m->n; i++) zmq_msg_close(&m->parts[i]);
}

/* The socket's descriptor beside an idle pipe, as Winnow waits on a wake-up pipe too. */
static void wait_set(void *sock, struct pollfd *wait_on) {
    int fd, idle[2];
    size_t size = sizeof fd;
    zmq_getsockopt(sock, ZMQ_FD, &fd, &size);
    if (pipe(idle) != 0) { perror("pipe"); exit(1); }
    wait_on[0] = (struct pollfd){.fd = fd, .events = POLLIN};
    wait_on[1] = (struct pollfd){.fd = idle[0], .events = POLLIN};
}

static void echo_frames(int port, int fd_wait) {
    endpoint_socket s = open_socket(ZMQ_ROUTER, loopback(port));
    void *router = s.socket;
    struct pollfd wait_on[2];
    wait_set(router, wait_on);
    for (;;) {
        message m;
        receive(router, fd_wait, wait_on, &m);
        zmq_msg_t *last = &m.parts[m.n - 1];
        int stop = zmq_msg_size(last) == 4 && memcmp(zmq_msg_data(last), "STOP", 4) == 0;
        for (int i = 0; i < m.n; i++) zmq_msg_send(&m.parts[i], router, i < m.n - 1 ? ZMQ_SNDMORE : 0);
        if (stop) break;
    }
    usleep(100000); /* let the last reply leave */
    close_socket(s);
    exit(0);
}

static double time_frames(int port, int fd_wait, int frames) {
    endpoint_socket s = open_socket(ZMQ_DEALER, loopback(port));
    void *dealer = s.socket;
    struct pollfd wait_on[2];
    wait_set(dealer, wait_on);
    static char payload[SIZE], head[40];
    static long long samples[COUNT];
    for (int i = 0; i < WARMUP + COUNT; i++) {
        long long t0 = monotonic_ns();
        if (frames == 2) zmq_send(dealer, head, sizeof head, ZMQ_SNDMORE);
        zmq_send(dealer, payload, SIZE, 0);
        message m;
        receive(dealer, fd_wait, wait_on, &m);
        release(&m);
        if (i >= WARMUP) samples[i - WARMUP] = monotonic_ns() - t0;
    }
    zmq_send(dealer, "STOP", 4, 0);
    message m;
    receive(dealer, 0, wait_on, &m);
    release(&m);
    close_socket(s);
    return p50_us(samples, COUNT);
}

/* ---- servers: Winnow's request frames, a C server and Winnow's ---- */

static int put_varint(uint8_t *p, uint64_t v) {
    int n = 0;
    while (v >= 0x80) { p[n++] = (uint8_t)(v | 0x80); v >>= 7; }
    p[n++] = (uint8_t)v;
    return n;
}

static int get_varint(const uint8_t *p, int length, int *at, uint64_t *v) {
    *v = 0;
    for (int shift = 0; *at < length && shift < 64; shift += 7) {
        uint8_t b = p[(*at)++];
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return 1;
    }
    return 0;
}

/* RequestHeader.request_id (field 3) from a WRQ1 head frame. */
static uint64_t request_id(const uint8_t *head, int length) {
    int at = 4;
    uint64_t key, value;
    while (at < length && get_varint(head, length, &at, &key)) {
        int field = (int)(key >> 3), wire_type = (int)(key & 7);
        if (wire_type == 0) {
            if (!get_varint(head, length, &at, &value)) break;
            if (field == 3) return value;
        } else if (wire_type == 2) {
            if (!get_varint(head, length, &at, &value)) break;
            at += (int)value;
        } else {
            break;
        }
    }
    return 0;
}

/* [peer, WRQ1 RequestHeader, payload] -> [peer, WRP1 ReplyHeader{request_id}, payload] */
static void serve_winnow_frames(int port) {
    void *router = open_socket(ZMQ_ROUTER, loopback(port)).socket;
    for (;;) {
        zmq_msg_t peer, head, payload;
        zmq_msg_init(&peer);
        zmq_msg_init(&head);
        zmq_msg_init(&payload);
        if (zmq_msg_recv(&peer, router, 0) < 0 || zmq_msg_recv(&head, router, 0) < 0 ||
            zmq_msg_recv(&payload, router, 0) < 0) { perror("zmq_msg_recv"); exit(1); }
        uint8_t reply[32] = {'W', 'R', 'P', '1', 0x08};
        int n = 5 + put_varint(reply + 5, request_id(zmq_msg_data(&head), (int)zmq_msg_size(&head)));
        zmq_msg_send(&peer, router, ZMQ_SNDMORE);
        zmq_send(router, reply, n, ZMQ_SNDMORE);
        zmq_msg_send(&payload, router, 0);
        zmq_msg_close(&head);
    }
}

/* COUNT calls of bench-echo.Echo with a 2 KB payload, one at a time; returns the p50. */
static double call_echo(const char *endpoint, int count) {
    endpoint_socket s = open_socket(ZMQ_DEALER, endpoint);
    void *dealer = s.socket;
    static char payload[SIZE];
    long long *samples = malloc(sizeof *samples * count);
    for (int i = 0; i < WARMUP + count; i++) {
        long long t0 = monotonic_ns();
        uint8_t head[128] = {'W', 'R', 'Q', '1'};
        int n = 4;
        head[n++] = 0x0a; head[n++] = 10; memcpy(head + n, "bench-echo", 10); n += 10; /* service */
        head[n++] = 0x12; head[n++] = 4; memcpy(head + n, "Echo", 4); n += 4;        /* method */
        head[n++] = 0x18; n += put_varint(head + n, (uint64_t)i + 1);                  /* request_id */
        head[n++] = 0x20; n += put_varint(head + n, (uint64_t)(wall_us() + 10000000));  /* deadline */
        zmq_send(dealer, head, n, ZMQ_SNDMORE);
        zmq_send(dealer, payload, SIZE, 0);
        zmq_msg_t reply_head, reply_payload;
        zmq_msg_init(&reply_head);
        zmq_msg_init(&reply_payload);
        if (zmq_msg_recv(&reply_head, dealer, 0) < 0 || zmq_msg_recv(&reply_payload, dealer, 0) < 0) {
            perror("zmq_msg_recv");
            exit(1);
        }
        if (zmq_msg_size(&reply_payload) != SIZE) {
            fprintf(stderr, "reply %d carried %zu bytes, not %d\n", i, zmq_msg_size(&reply_payload), SIZE);
            exit(1);
        }
        zmq_msg_close(&reply_head);
        zmq_msg_close(&reply_payload);
        if (i >= WARMUP) samples[i - WARMUP] = monotonic_ns() - t0;
    }
    close_socket(s);
    double p50 = p50_us(samples, count);
    free(samples);
    return p50;
}

/* ---- CPU time of a server's threads ---- */

/* Clock ticks (user, system) of pid's threads, split into libzmq's background threads
 * ("ZMQbg/...": the I/O thread and the reaper) and the rest (the application's). */
typedef struct { long long app_user, app_system, zmq_user, zmq_system; } thread_ticks;

static thread_ticks read_ticks(pid_t pid) {
    thread_ticks t = {0, 0, 0, 0};
    char path[256];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *tasks = opendir(path);
    if (!tasks) return t;
    struct dirent *entry;
    while ((entry = readdir(tasks))) {
        if (entry->d_name[0] == '.') continue;
        char file[600], line[1024];
        snprintf(file, sizeof file, "%s/%s/stat", path, entry->d_name);
        FILE *f = fopen(file, "r");
        if (!f) continue;
        size_t n = fread(line, 1, sizeof line - 1, f);
        fclose(f);
        line[n] = 0;
        char *open = strchr(line, '('), *close = strrchr(line, ')');
        if (!open || !close) continue;
        int libzmq = strncmp(open + 1, "ZMQbg/", 6) == 0;
        long long user = 0, system = 0;
        /* After "comm)": state, then fields 4..; utime and stime are fields 14 and 15. */
        char *field = close + 2;
        for (int i = 3; i <= 15 && field; i++) {
            if (i == 14) user = atoll(field);
            if (i == 15) system = atoll(field);
            field = strchr(field, ' ');
            if (field) field++;
        }
        if (libzmq) { t.zmq_user += user; t.zmq_system += system; }
        else { t.app_user += user; t.app_system += system; }
    }
    closedir(tasks);
    return t;
}

/* ---- rounds ---- */

static void summarise(int variants, const char **names, int rounds, double p50[][4]) {
    for (int v = 0; v < variants; v++) {
        double ratios[MAX_ROUNDS], own[MAX_ROUNDS];
        int slower = 0;
        for (int r = 0; r < rounds; r++) {
            ratios[r] = p50[r][0] / p50[r][v];
            own[r] = p50[r][v];
            if (p50[r][v] > p50[r][0]) slower++;
        }
        qsort(ratios, rounds, sizeof *ratios, compare_d);
        qsort(own, rounds, sizeof *own, compare_d);
        printf("%-15s median p50 %7.1f us   median ratio %s/it %.3f   slower than %s in %d of %d rounds\n",
               names[v], own[rounds / 2], names[0], ratios[rounds / 2], names[0], slower, rounds);
    }
}

static pid_t start_winnow(const char *binary, const char *endpoint) {
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execl(binary, binary, "bench", "wire", "--serve-echo", endpoint, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static void stop_child(pid_t pid) {
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

int main(int argc, char **argv) {
    static double p50[MAX_ROUNDS][4];
    if (argc == 3 && strcmp(argv[1], "pattern") == 0) {
        const char *names[4] = {"block/1-frame", "fd/1-frame", "block/2-frames", "fd/2-frames"};
        const int fd_wait[4] = {0, 1, 0, 1}, frames[4] = {1, 1, 2, 2};
        int rounds = atoi(argv[2]);
        if (rounds < 1 || rounds > MAX_ROUNDS) { fprintf(stderr, "rounds: 1 to %d\n", MAX_ROUNDS); return 2; }
        for (int r = 0; r < rounds; r++) {
            for (int k = 0; k < 4; k++) {
                int v = (k + r) % 4, port = free_port();
                pid_t server = fork();
                if (server == 0) echo_frames(port, fd_wait[v]);
                usleep(50000);
                p50[r][v] = time_frames(port, fd_wait[v], frames[v]);
                waitpid(server, NULL, 0);
            }
            printf("round %d:", r + 1);
            for (int v = 0; v < 4; v++) printf("  %s %.1f us", names[v], p50[r][v]);
            printf("\n");
            fflush(stdout);
        }
        summarise(4, names, rounds, p50);
        return 0;
    }
    if ((argc == 4 || argc == 5) && strcmp(argv[1], "servers") == 0) {
        /* One Winnow binary, or two to compare (each against the same C server, same rounds). */
        const char *names[3] = {"C server", "Winnow server", "Winnow server B"};
        const char *binaries[3] = {NULL, argv[3], argc == 5 ? argv[4] : NULL};
        int variants = argc == 5 ? 3 : 2;
        thread_ticks ticks[3] = {{0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}};
        int rounds = atoi(argv[2]);
        if (rounds < 1 || rounds > MAX_ROUNDS) { fprintf(stderr, "rounds: 1 to %d\n", MAX_ROUNDS); return 2; }
        for (int r = 0; r < rounds; r++) {
            for (int k = 0; k < variants; k++) {
                int v = (k + r) % variants, port = free_port();
                char endpoint[64];
                snprintf(endpoint, sizeof endpoint, "%s", loopback(port));
                pid_t server;
                if (v == 0) {
                    server = fork();
                    if (server == 0) serve_winnow_frames(port);
                    usleep(50000);
                } else {
                    server = start_winnow(binaries[v], endpoint);
                    usleep(500000);
                }
                thread_ticks before = read_ticks(server);
                p50[r][v] = call_echo(endpoint, COUNT);
                thread_ticks after = read_ticks(server);
                ticks[v].app_user += after.app_user - before.app_user;
                ticks[v].app_system += after.app_system - before.app_system;
                ticks[v].zmq_user += after.zmq_user - before.zmq_user;
                ticks[v].zmq_system += after.zmq_system - before.zmq_system;
                stop_child(server);
            }
            printf("round %d:", r + 1);
            for (int v = 0; v < variants; v++) printf("  %s %.1f us", names[v], p50[r][v]);
            printf("\n");
            fflush(stdout);
        }
        summarise(variants, names, rounds, p50);
        /* CPU per call, summed over every round (a tick is 10 ms, too coarse for one round). */
        double per_call = 1e6 / (double)sysconf(_SC_CLK_TCK) / ((double)rounds * (COUNT + WARMUP));
        for (int v = 0; v < variants; v++) {
            printf("%-15s CPU per call: application threads %.1f us user + %.1f us system, "
                   "libzmq threads %.1f us user + %.1f us system\n", names[v],
                   ticks[v].app_user * per_call, ticks[v].app_system * per_call,
                   ticks[v].zmq_user * per_call, ticks[v].zmq_system * per_call);
        }
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "clients") == 0) {
        /* The C client and Winnow's client (`WINNOW bench wire --time-echo-at`), one after the
         * other against the same C server in each round. */
        const char *names[2] = {"C client", "Winnow client"};
        double cpu_user[2] = {0, 0}, cpu_system[2] = {0, 0};
        int rounds = atoi(argv[2]);
        if (rounds < 1 || rounds > MAX_ROUNDS) { fprintf(stderr, "rounds: 1 to %d\n", MAX_ROUNDS); return 2; }
        for (int r = 0; r < rounds; r++) {
            int port = free_port();
            char endpoint[64];
            snprintf(endpoint, sizeof endpoint, "%s", loopback(port));
            pid_t server = fork();
            if (server == 0) serve_winnow_frames(port);
            usleep(50000);
            for (int k = 0; k < 2; k++) {
                int v = (k + r) % 2;
                if (v == 0) {
                    thread_ticks before = read_ticks(getpid());
                    p50[r][0] = call_echo(endpoint, CLIENT_COUNT);
                    thread_ticks after = read_ticks(getpid());
                    double per_call = 1e6 / (double)sysconf(_SC_CLK_TCK) / (CLIENT_COUNT + WARMUP);
                    cpu_user[0] += (after.app_user - before.app_user) * per_call;
                    cpu_system[0] += (after.app_system - before.app_system) * per_call;
                } else {
                    char command[512];
                    snprintf(command, sizeof command, "%s bench wire --time-echo-at %s --small-count %d",
                             argv[3], endpoint, CLIENT_COUNT);
                    FILE *out = popen(command, "r");
                    double p = 0, user = 0, system = 0;
                    char line[256];
                    while (out && fgets(line, sizeof line, out)) {
                        sscanf(line, "p50 %lf us", &p);
                        sscanf(line, "cpu %lf %lf us", &user, &system);
                    }
                    if (!out || pclose(out) != 0 || p <= 0) { fprintf(stderr, "%s failed\n", command); return 1; }
                    p50[r][1] = p;
                    cpu_user[1] += user;
                    cpu_system[1] += system;
                }
            }
            stop_child(server);
            printf("round %d:  C client %.1f us  Winnow client %.1f us\n", r + 1, p50[r][0], p50[r][1]);
            fflush(stdout);
        }
        summarise(2, names, rounds, p50);
        for (int v = 0; v < 2; v++) {
            printf("%-15s CPU per call: application threads %.1f us user + %.1f us system\n", names[v],
                   cpu_user[v] / rounds, cpu_system[v] / rounds);
        }
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "serve") == 0) {
        serve_winnow_frames(atoi(argv[2]));
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "call") == 0) {
        printf("p50 %.1f us\n", call_echo(argv[2], atoi(argv[3])));
        return 0;
    }
    fprintf(stderr, "usage: %s pattern ROUNDS | servers ROUNDS WINNOW [WINNOW_B] | clients ROUNDS WINNOW | serve PORT | call ENDPOINT COUNT\n", argv[0]);
    return 2;
}
