/* Per-packet TUN <-> UDP loop: the reference for user-space overlays.
 *
 * The design of flannel's udp backend (its proxy in C): one thread polls a TUN
 * device and a UDP socket; each TUN read is one sendto() to the peer, each
 * recv() is one TUN write. No batching, no offloads, no encryption.
 *
 *   udp_tun_loop TUNNAME LOCAL_IP PORT PEER_IP MTU
 *
 * Prints "ready" on stdout once the TUN device exists (the caller then adds
 * addresses and routes), and runs until killed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int open_tun(const char *name) {
    struct ifreq ifr;
    int fd = open("/dev/net/tun", O_RDWR);
    if (fd < 0) { perror("open /dev/net/tun"); exit(1); }
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) { perror("TUNSETIFF"); exit(1); }
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s TUNNAME LOCAL_IP PORT PEER_IP MTU\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[3]), mtu = atoi(argv[5]);
    struct sockaddr_in local = {0}, peer = {0};
    local.sin_family = peer.sin_family = AF_INET;
    local.sin_port = peer.sin_port = htons(port);
    if (inet_pton(AF_INET, argv[2], &local.sin_addr) != 1 ||
        inet_pton(AF_INET, argv[4], &peer.sin_addr) != 1 || port <= 0 || mtu < 576) {
        fprintf(stderr, "bad address, port or mtu\n");
        return 2;
    }
    int tun = open_tun(argv[1]);
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    if (udp < 0 || bind(udp, (struct sockaddr *)&local, sizeof local) < 0) {
        perror("udp bind");
        return 1;
    }
    int buf = 8 << 20;
    setsockopt(udp, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf);
    setsockopt(udp, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof buf);
    printf("ready\n");
    fflush(stdout);

    char pkt[65536];
    struct pollfd fds[2] = {{tun, POLLIN, 0}, {udp, POLLIN, 0}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            perror("poll");
            return 1;
        }
        if (fds[0].revents & POLLIN) {
            ssize_t n = read(tun, pkt, sizeof pkt);
            if (n > 0 && n <= mtu)
                sendto(udp, pkt, (size_t)n, 0, (struct sockaddr *)&peer, sizeof peer);
        }
        if (fds[1].revents & POLLIN) {
            ssize_t n = recv(udp, pkt, sizeof pkt, 0);
            if (n > 0 && write(tun, pkt, (size_t)n) < 0 && errno != EAGAIN) {
                /* a full TUN queue drops, as the kernel would */
            }
        }
    }
}
