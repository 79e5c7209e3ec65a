/*
** keycase.h: case folding and checks of compare-exchange keys, shared by
** the core (for the Lua layer) and the embedded store (for its primary key).
*/
#ifndef CMPXCHG_KEYCASE_H
#define CMPXCHG_KEYCASE_H

#include <stddef.h>

/* RavenDB's limit: a key is at most 512 UTF-8 bytes */
#define CX_MAX_KEY_BYTES 512

/*
** Lower-cases the UTF-8 string `s` (length `len`) into `out`, which must hold
** `len` bytes (folding never changes the encoded length here). Returns 0 on
** success, -1 when `s` is not valid UTF-8.
*/
int cx_key_fold (const char *s, size_t len, char *out);

#endif
