/*
** jsonpath.h: finding values in JSON text without decoding it, shared by the
** core (core.json_fields, for replies read from Lua) and the renewal thread
** (which must not touch a Lua state).
*/
#ifndef CMPXCHG_JSONPATH_H
#define CMPXCHG_JSONPATH_H

#include <stddef.h>

#include "lua.h"

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

/* core.json_fields and core.json_texts (text, path...): see jsonpath.c */
int cx_json_fields (lua_State *L);
int cx_json_texts (lua_State *L);

#endif
