/*
** http.h: what the libcurl transport (http.c) shares with the streaming
** reads of its replies (stream.c).
*/
#ifndef CMPXCHG_HTTP_H
#define CMPXCHG_HTTP_H

#include <curl/curl.h>

#include "lua.h"

#pragma GCC visibility push(hidden)

/* the easy handle of the cmpxchg.Http at `idx` (raises when it is closed) */
CURL *cx_http_handle (lua_State *L, int idx);

/*
** The headers of table `idx` ({name = value}) as a list for libcurl, with
** "Expect:" first; NULL with *bad set to the offending name when one is not
** a pair of strings or would inject a line. No Lua allocation: nothing raises.
*/
struct curl_slist *cx_http_headers (lua_State *L, int idx, const char **bad);

/* pushes `url` as messages show it (password masked, control characters
** escaped) and returns it */
const char *cx_push_shown_url (lua_State *L, const char *url);

/* http:stream(...) (stream.c) */
int cx_http_stream (lua_State *L);

#pragma GCC visibility pop

#endif
