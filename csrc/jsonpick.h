/*
** jsonpick.h: picking values out of JSON text by a dotted path, without
** decoding it (not JSONPath: member names and array positions only).
*/
#ifndef CMPXCHG_JSONPICK_H
#define CMPXCHG_JSONPICK_H

#include <stddef.h>

#pragma GCC visibility push(hidden)

/* 0 when s[0..n) is one valid JSON value (RFC 8259), surrounded only by
** white space and nested at most 1000 deep (as lua-cjson allows); else -1 */
int cx_json_valid (const char *s, size_t n);

/*
** Finds the value at `path` in the JSON text s[0..n): member names and array
** positions (from 0) separated by dots ("responses.0.response_range.kvs.0.value")
** and sets [*v, *vend) to its text. Returns 0 when found, -1 when absent. The
** text must be valid (cx_json_valid) for the answer to mean anything.
*/
int cx_json_path (const char *s, size_t n, const char *path, const char **v,
                  const char **vend);

#pragma GCC visibility pop

#endif
