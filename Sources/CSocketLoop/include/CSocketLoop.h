#ifndef C_SOCKET_LOOP_H
#define C_SOCKET_LOOP_H

// What the data path's own event loop needs from Linux that Glibc's Swift module does not export: epoll, eventfd,
// and the TCP options. Everything here is a thin, allocation-free wrapper.

#if defined(__linux__)
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>

/// `struct epoll_event` is packed on x86-64, which Swift cannot lay out itself: events are read and written
/// through these accessors instead of the struct's fields.
static inline uint32_t c_loop_event_flags(const struct epoll_event *events, int index) {
    return events[index].events;
}

static inline uint64_t c_loop_event_data(const struct epoll_event *events, int index) {
    return events[index].data.u64;
}

static inline int c_loop_epoll_add(int epoll, int descriptor, uint32_t flags, uint64_t data) {
    struct epoll_event event = {.events = flags, .data = {.u64 = data}};
    return epoll_ctl(epoll, EPOLL_CTL_ADD, descriptor, &event);
}

static inline int c_loop_epoll_modify(int epoll, int descriptor, uint32_t flags, uint64_t data) {
    struct epoll_event event = {.events = flags, .data = {.u64 = data}};
    return epoll_ctl(epoll, EPOLL_CTL_MOD, descriptor, &event);
}

static inline int c_loop_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

static inline int c_loop_epoll_wait(int epoll, struct epoll_event *events, int capacity, int timeout) {
    return epoll_wait(epoll, events, capacity, timeout);
}

static inline size_t c_loop_event_size(void) { return sizeof(struct epoll_event); }

/// `accept4` with SOCK_NONBLOCK | SOCK_CLOEXEC. Defined in shim.c, which needs `_GNU_SOURCE`: defining it here
/// would change glibc's struct definitions for this module only and clash with the other modules' (Glibc's).
int c_loop_accept(int listener, struct sockaddr *address, socklen_t *length);

/// Names the calling thread (`pthread_setname_np`, also GNU); defined in shim.c.
void c_loop_name_thread(const char *name);

static inline int c_loop_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

static const uint32_t c_loop_in = EPOLLIN;
static const uint32_t c_loop_out = EPOLLOUT;
static const uint32_t c_loop_rdhup = EPOLLRDHUP;
static const uint32_t c_loop_hup = EPOLLHUP;
static const uint32_t c_loop_err = EPOLLERR;
static const uint32_t c_loop_et = EPOLLET;

static const int c_loop_sock_nonblock_cloexec = SOCK_NONBLOCK | SOCK_CLOEXEC;
static const int c_loop_msg_nosignal = MSG_NOSIGNAL;
static const int c_loop_tcp_nodelay = TCP_NODELAY;
#endif

#endif
