/* The one JSON string quoter, for log lines and config messages. */
#include "lifeline/jsonstr.h"

#include <stdio.h>

size_t jsonstr_quote(char *buf, size_t len, const char *s, size_t max)
{
    size_t o = 0;
    buf[o++] = '"';
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (o + 8 >= len || o >= max) {
            /* Do not cut a UTF-8 sequence in half. */
            while (o > 1 && ((unsigned char)buf[o - 1] & 0xC0) == 0x80)
                o--;
            if (o > 1 && ((unsigned char)buf[o - 1] & 0xC0) == 0xC0)
                o--;
            o += (size_t)snprintf(buf + o, len - o, "...");
            break;
        }
        if (ch == '"' || ch == '\\')
            o += (size_t)snprintf(buf + o, len - o, "\\%c", ch);
        else if (ch < 0x20)
            o += (size_t)snprintf(buf + o, len - o, "\\u%04x", ch);
        else
            buf[o++] = (char)ch;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return o;
}
