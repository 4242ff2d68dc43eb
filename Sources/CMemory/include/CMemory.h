#ifndef C_MEMORY_H
#define C_MEMORY_H

#include <stdlib.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

/// Returns the heap's free memory to the system: glibc's `malloc_trim(0)`, which also releases free pages inside
/// the heap, not only at its top. Returns 1 when memory was released, 0 otherwise (and always 0 without glibc).
static inline int c_memory_release_free(void) {
#if defined(__GLIBC__)
    return malloc_trim(0);
#else
    return 0;
#endif
}

#endif
