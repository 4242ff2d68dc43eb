// The GNU extensions CSocketLoop.h declares; `_GNU_SOURCE` stays in this file (see the header).
#define _GNU_SOURCE
#include <pthread.h>
#include <sys/socket.h>

#include "CSocketLoop.h"

int c_loop_accept(int listener, struct sockaddr *address, socklen_t *length) {
    return accept4(listener, address, length, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

void c_loop_name_thread(const char *name) { pthread_setname_np(pthread_self(), name); }
