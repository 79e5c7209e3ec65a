/*
** keycase.c: RavenDB compares compare-exchange keys with ToLowerInvariant.
** We fold the same way for the scripts most keys are written in (ASCII,
** Latin-1, Latin Extended-A, Greek, Cyrillic); code points outside those
** blocks compare exactly. Every mapping used keeps the UTF-8 length, so the
** folded key has the byte length of the original and the 512-byte limit
** means the same thing before and after folding.
*/

#include "keycase.h"

/* lower-case of one code point, for the blocks above; others unchanged */
static unsigned long fold_codepoint (unsigned long c) {
    if (c >= 'A' && c <= 'Z')
        return c + 32;
    if (c < 0x80)
        return c;
    if (c >= 0xC0 && c <= 0xDE && c != 0xD7)                /* Latin-1 */
        return c + 32;
    if (c >= 0x100 && c <= 0x137 && (c & 1) == 0)           /* Latin Ext-A */
        return c == 0x130 ? c : c + 1;      /* U+0130 becomes "i" + dot: keep */
    if (c >= 0x139 && c <= 0x148 && (c & 1) == 1)
        return c + 1;
    if (c >= 0x14A && c <= 0x177 && (c & 1) == 0)
        return c + 1;
    if (c == 0x178)
        return 0xFF;
    if (c == 0x179 || c == 0x17B || c == 0x17D)
        return c + 1;
    if (c >= 0x391 && c <= 0x3AB && c != 0x3A2)             /* Greek */
        return c + 32;
    if (c == 0x386) return 0x3AC;                           /* with tonos */
    if (c >= 0x388 && c <= 0x38A) return c + 37;
    if (c == 0x38C) return 0x3CC;
    if (c == 0x38E || c == 0x38F) return c + 63;
    if (c >= 0x410 && c <= 0x42F)                           /* Cyrillic */
        return c + 32;
    if (c >= 0x400 && c <= 0x40F)
        return c + 80;
    if (c == 0x4C0)
        return 0x4CF;
    if (c >= 0x4C1 && c <= 0x4CD && (c & 1) == 1)
        return c + 1;
    if (c >= 0x460 && c <= 0x4FF && (c & 1) == 0 &&
        !(c >= 0x482 && c <= 0x489) && !(c >= 0x4C0 && c <= 0x4CF))
        return c + 1;
    return c;
}

/* decodes one UTF-8 sequence; returns its length, 0 when invalid */
static size_t decode_utf8 (const unsigned char *s, size_t len, unsigned long *cp) {
    unsigned long c = s[0];
    size_t n, i;
    unsigned long min;
    if (c < 0x80) { *cp = c; return 1; }
    else if (c >= 0xC2 && c <= 0xDF) { n = 2; c &= 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { n = 3; c &= 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { n = 4; c &= 0x07; min = 0x10000; }
    else return 0;
    if (n > len) return 0;
    for (i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;   /* overlong, out of range, or a surrogate */
    *cp = c;
    return n;
}

static void encode_utf8 (unsigned long c, size_t n, char *out) {
    switch (n) {
        case 1: out[0] = (char)c; break;
        case 2: out[0] = (char)(0xC0 | (c >> 6));
                out[1] = (char)(0x80 | (c & 0x3F)); break;
        default: break;     /* 3- and 4-byte code points are never folded */
    }
}

int cx_key_fold (const char *s, size_t len, char *out) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned long c, lower;
        size_t n = decode_utf8(p + i, len - i, &c);
        if (n == 0)
            return -1;
        lower = fold_codepoint(c);
        if (lower == c || n > 2) {
            size_t k;
            for (k = 0; k < n; k++)
                out[i + k] = s[i + k];
        }
        else
            encode_utf8(lower, n, out + i);
        i += n;
    }
    return 0;
}
