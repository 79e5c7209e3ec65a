/*
** keys.h: case folding of compare-exchange keys, used by the embedded store
** for its primary key (keys.c gives the Lua layer the same folding).
*/
#ifndef CMPXCHG_KEYS_H
#define CMPXCHG_KEYS_H

#include <stddef.h>

/* RavenDB's limit: a key is at most 512 UTF-8 bytes */
#define CX_MAX_KEY_BYTES 512

/*
** Lower-cases the UTF-8 string `s` (length `len`) into `out`, which must hold
** `len` bytes (folding never changes the encoded length here). Returns 0 on
** success, -1 when `s` is not valid UTF-8.
*/
#pragma GCC visibility push(hidden)
int cx_key_fold (const char *s, size_t len, char *out);
#pragma GCC visibility pop

#endif
