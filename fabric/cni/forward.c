/* fabric-cni native forwarder: the runtime's process does almost nothing.
 *
 * A Python plugin costs ~21 ms of CPU per exec before any work (interpreter, imports), a
 * Go plugin ~2.5 ms; 20 ADDs at once are CPU-bound on that (docs/benchmarks.md). This
 * program reads stdin, opens CNI_NETNS (in the runtime's mount namespace), and sends
 *     {"op": "cni.exec", "env": {CNI_* and FABRIC_* variables}, "stdin": "..."}
 * with the namespace descriptor (SCM_RIGHTS) to the agent, which runs fabric-cni's own
 * logic (fabric.cni.main.run) and answers "STATUS\n" followed by the plugin's stdout.
 *
 * Anything else - no agent, a refused or malformed answer, an error before the answer -
 * executes the Python plugin (FALLBACK) with the same arguments and stdin, so every
 * decision of the CNI front end (codes, DEL without an agent, versions) stays in one
 * place. Built by fabric.cni.native.build_native with -DSOCKET_PATH and -DFALLBACK.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SOCKET_PATH
#define SOCKET_PATH "/run/netfabric/agent.sock"
#endif
#ifndef FALLBACK
#define FALLBACK "/opt/cni/bin/fabric-cni.pyz"
#endif
#define ANSWER_TIMEOUT_S 60

extern char **environ;
/* found in the binary by `fabric cni install/uninstall` (fabric.cni.native.MARK) */
__attribute__((used)) static const char mark[] = "netfabric fabric-cni native forwarder";

struct buf {
    char *data;
    size_t len, cap;
};

static void put(struct buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 65536);
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            exit(70);
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

/* A JSON string; bytes >= 0x80 pass through (the agent rejects invalid UTF-8, and the
 * forwarder then falls back to the Python plugin, which reports it). */
static void put_json(struct buf *b, const char *s, size_t n) {
    put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            put(b, esc, 2);
        } else if (c < 0x20) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", c);
            put(b, esc, 6);
        } else {
            put(b, (const char *)&s[i], 1);
        }
    }
    put(b, "\"", 1);
}

static struct buf in;

static void fallback(char **argv) {
    int p[2];
    if (pipe(p) == 0) {
        pid_t pid = fork();
        if (pid == 0) { /* replay stdin to the Python plugin */
            close(p[0]);
            for (size_t off = 0; off < in.len;) {
                ssize_t w = write(p[1], in.data + off, in.len - off);
                if (w <= 0)
                    break;
                off += (size_t)w;
            }
            _exit(0);
        }
        close(p[1]);
        dup2(p[0], 0);
        close(p[0]);
    }
    argv[0] = FALLBACK;
    execv(FALLBACK, argv);
    printf("{\"cniVersion\": \"1.0.0\", \"code\": 11, \"msg\": \"try again later\", "
           "\"details\": \"fabric-cni: neither the agent nor %s could be run\"}\n", FALLBACK);
    exit(1);
}

int main(int argc, char **argv) {
    (void)argc;
    char chunk[65536];
    ssize_t n;
    while ((n = read(0, chunk, sizeof chunk)) > 0)
        put(&in, chunk, (size_t)n);

    struct buf req = {0};
    put(&req, "{\"op\": \"cni.exec\", \"env\": {", 27);
    int first = 1;
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "CNI_", 4) && strncmp(*e, "FABRIC_", 7))
            continue;
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        if (!first)
            put(&req, ", ", 2);
        first = 0;
        put_json(&req, *e, (size_t)(eq - *e));
        put(&req, ": ", 2);
        put_json(&req, eq + 1, strlen(eq + 1));
    }
    put(&req, "}, \"stdin\": ", 12);
    put_json(&req, in.data ? in.data : "", in.len);
    put(&req, "}\n", 2);

    const char *path = getenv("FABRIC_AGENT_SOCKET");
    if (!path || !*path)
        path = SOCKET_PATH;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path)
        fallback(argv);
    strcpy(addr.sun_path, path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = ANSWER_TIMEOUT_S};
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); /* connect waits out a backlog */
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) != 0)
        fallback(argv);

    const char *ns = getenv("CNI_NETNS");
    int nsfd = (ns && *ns) ? open(ns, O_RDONLY | O_CLOEXEC) : -1;
    struct iovec iov = {.iov_base = req.data, .iov_len = req.len};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nsfd >= 0) {
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof control.buf;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &nsfd, sizeof(int));
    }
    ssize_t sent = sendmsg(s, &msg, MSG_NOSIGNAL);
    if (sent < 0)
        fallback(argv);
    for (size_t off = (size_t)sent; off < req.len;) {
        ssize_t w = send(s, req.data + off, req.len - off, MSG_NOSIGNAL);
        if (w <= 0)
            fallback(argv);
        off += (size_t)w;
    }
    if (nsfd >= 0)
        close(nsfd);

    struct buf ans = {0};
    while ((n = read(s, chunk, sizeof chunk)) > 0)
        put(&ans, chunk, (size_t)n);
    close(s);
    /* "STATUS\n" + stdout; anything else (a JSON error answer, nothing) -> the fallback */
    char *nl = ans.data ? memchr(ans.data, '\n', ans.len) : NULL;
    if (n < 0 || !nl || nl == ans.data || (ans.data[0] != '0' && ans.data[0] != '1'))
        fallback(argv);
    int status = atoi(ans.data);
    size_t off = (size_t)(nl + 1 - ans.data);
    while (off < ans.len) {
        ssize_t w = write(1, ans.data + off, ans.len - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    return status;
}
