/*
** embedded.h: the embedded store's C face, for the renewal thread, which
** writes over its own connection and never touches a Lua state.
*/
#ifndef CMPXCHG_EMBEDDED_H
#define CMPXCHG_EMBEDDED_H

#include <stddef.h>

typedef struct Embedded Embedded;

/* opens `path` (namespace `ns`); NULL with `err` filled on failure */
Embedded *cx_embedded_connect (const char *path, const char *ns, int busy_ms,
                               const char *sync, char *err, size_t errlen);

/*
** put(key, json, index) with @expires = `expires`: 1 when swapped (*result:
** the new index), 0 when the compare failed (*result: the current index, 0
** when absent), -1 on an error (described in `err`).
*/
int cx_embedded_swap (Embedded *h, const char *key, size_t klen, const char *json,
                      size_t jlen, long long index, double expires, long long *result,
                      char *err, size_t errlen);

void cx_embedded_disconnect (Embedded *h);

#endif
