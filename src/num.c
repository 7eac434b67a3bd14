/* The one decimal number parser: digits only, checked for overflow and a maximum. */
#include "lifeline/num.h"

#include <errno.h>

int num_parse(const char *s, size_t len, uint64_t max, uint64_t *out)
{
    if (len == 0)
        return -EINVAL;
    uint64_t v = 0;
    int over = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (max - d) / 10 || d > max)
            over = 1; /* keep going: a non-digit later is EINVAL, not ERANGE */
        else
            v = v * 10 + d;
    }
    if (over)
        return -ERANGE;
    *out = v;
    return 0;
}
