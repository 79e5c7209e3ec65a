/*
** storedir.c: where a store file may live. The default store's directories
** are created and checked as ssh checks ~/.ssh, so that no other user can
** replace the store; for any other path, what is wrong with the directory
** that should hold it, in words (SQLite only says "unable to open").
*/

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "lua.h"
#include "lauxlib.h"

#include "compat.h"
#include "units.h"

#define PATH_BYTES 4096

/*
** Why `path` (just stat'ed into `st`) is no safe place for the default
** store, in `why`, or 0 when it is one: a directory (a regular file when
** `file`), owned by us or root, that its group and others cannot write.
*/
static int unsafe (const char *path, const struct stat *st, int file, char *why,
                   size_t n) {
    uid_t uid = geteuid();
    if (S_ISLNK(st->st_mode))
        snprintf(why, n, "%s is a symbolic link", path);
    else if (file ? !S_ISREG(st->st_mode) : !S_ISDIR(st->st_mode))
        snprintf(why, n, "%s is not a %s", path, file ? "regular file" : "directory");
    else if (st->st_uid != uid && st->st_uid != 0)
        snprintf(why, n, "%s is owned by uid %lu, not by you (uid %lu) or root", path,
                 (unsigned long)st->st_uid, (unsigned long)uid);
    else if (!file && (st->st_mode & (S_IWGRP | S_IWOTH)) != 0)
        snprintf(why, n, "%s is writable by its group or others (mode %04lo)", path,
                 (unsigned long)(st->st_mode & 07777));
    else
        return 0;
    return 1;
}

/*
** core.state_file(path, top [, create]) -> true | nil, message. `path` is
** the default store file, below the directory `top` (HOME, or XDG_STATE_HOME
** outside it). With `create`, makes the missing directories between them
** (mode 0700). Then checks every directory from the file's up to `top`, and
** the file, that exist: below `top` nothing may be a symbolic link (lstat);
** `top` itself may be one (a HOME under /home -> /usr/home), so it is followed.
*/
static int core_state_file (lua_State *L) {
    size_t len, toplen, i, n;
    const char *path = luaL_checklstring(L, 1, &len);
    const char *top = luaL_checklstring(L, 2, &toplen);
    int create = lua_toboolean(L, 3);
    char buf[PATH_BYTES], why[PATH_BYTES + 128];
    struct stat st;
    luaL_argcheck(L, len < sizeof buf, 1, "path too long");
    luaL_argcheck(L, toplen > 0 && top[0] == '/', 2, "not an absolute path");
    luaL_argcheck(L, len > toplen && memcmp(path, top, toplen) == 0 &&
                  (toplen == 1 || path[toplen] == '/'), 1, "not below the top directory");
    memcpy(buf, path, len + 1);
    n = len;
    while (n > toplen && buf[n - 1] != '/') n--;    /* the file's directory ... */
    if (n > 1) n--;                                 /* ... without its last slash */
    for (i = toplen + 1; create && i <= n; i++) {
        if (i == n || buf[i] == '/') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST) {
                lua_pushnil(L);
                lua_pushfstring(L, "cannot create directory %s: %s", buf, strerror(errno));
                return 2;
            }
            buf[i] = c;
        }
    }
    if (lstat(path, &st) == 0) {
        if (unsafe(path, &st, 1, why, sizeof why)) goto refuse;
    } else if (errno != ENOENT) {
        snprintf(why, sizeof why, "cannot check %s: %s", path, strerror(errno));
        goto refuse;
    }
    for (;;) {
        buf[n] = '\0';
        if ((n > toplen ? lstat(buf, &st) : stat(buf, &st)) == 0) {
            if (unsafe(buf, &st, 0, why, sizeof why)) goto refuse;
        } else if (errno != ENOENT || create) {
            snprintf(why, sizeof why, "cannot check %s: %s", buf, strerror(errno));
            goto refuse;
        }
        if (n <= toplen) break;
        while (n > 0 && buf[n - 1] != '/') n--;     /* up one directory */
        if (n > 1) n--;
    }
    lua_pushboolean(L, 1);
    return 1;
refuse:
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

/*
** core.dir_problem(path) -> message | nil: what keeps the directory that
** holds `path` from holding a store file (missing, not a directory, not
** writable), or nil when nothing does.
*/
static int core_dir_problem (lua_State *L) {
    size_t len, n;
    const char *path = luaL_checklstring(L, 1, &len);
    char dir[PATH_BYTES];
    struct stat st;
    luaL_argcheck(L, len < sizeof dir, 1, "path too long");
    memcpy(dir, path, len + 1);
    n = len;
    while (n > 0 && dir[n - 1] != '/') n--;
    if (n == 0) {
        dir[0] = '.';
        n = 1;
    } else if (n > 1) {
        n--;                                        /* "/x" keeps its "/" */
    }
    dir[n] = '\0';
    if (stat(dir, &st) != 0) {
        if (errno == ENOENT)
            lua_pushfstring(L, "directory %s does not exist (only the default store's "
                            "directory is created)", dir);
        else
            lua_pushfstring(L, "directory %s: %s", dir, strerror(errno));
    } else if (!S_ISDIR(st.st_mode)) {
        lua_pushfstring(L, "%s is not a directory", dir);
    } else if (access(dir, W_OK | X_OK) != 0) {
        lua_pushfstring(L, "directory %s is not writable: %s", dir, strerror(errno));
    } else {
        lua_pushnil(L);
    }
    return 1;
}

static const luaL_Reg storedir_functions[] = {
    {"state_file", core_state_file},
    {"dir_problem", core_dir_problem},
    {NULL, NULL}
};

int storedir_open (lua_State *L) {
    luaL_setfuncs(L, storedir_functions, 0);
    return 0;
}
