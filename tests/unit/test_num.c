/* Unit tests for num.c: the one decimal parser. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "lifeline/num.h"

static int parse(const char *s, uint64_t max, uint64_t *out)
{
    return num_parse(s, strlen(s), max, out);
}

static void test_values(void **state)
{
    (void)state;
    uint64_t v = 7;
    assert_int_equal(parse("0", 10, &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(parse("0065535", 65535, &v), 0);
    assert_int_equal(v, 65535);
    assert_int_equal(parse("18446744073709551615", UINT64_MAX, &v), 0);
    assert_int_equal(v, UINT64_MAX);
    /* Only the given length is read. */
    assert_int_equal(num_parse("12/close", 2, 100, &v), 0);
    assert_int_equal(v, 12);
}

static void test_rejects(void **state)
{
    (void)state;
    uint64_t v = 42;
    const char *bad[] = { "", "-1", "+1", " 1", "1 ", "1a", "0x10", "１", NULL };
    for (size_t i = 0; bad[i] != NULL; i++)
        assert_int_equal(parse(bad[i], UINT64_MAX, &v), -EINVAL);
    assert_int_equal(parse("65536", 65535, &v), -ERANGE);
    assert_int_equal(parse("18446744073709551616", UINT64_MAX, &v), -ERANGE);
    assert_int_equal(parse("99999999999999999999999", UINT64_MAX, &v), -ERANGE);
    /* Too large and not a number: not a number. */
    assert_int_equal(parse("99999999999999999999999x", UINT64_MAX, &v), -EINVAL);
    assert_int_equal(parse("11", 10, &v), -ERANGE);
    assert_int_equal(parse("10", 10, &v), 0);
    assert_int_equal(v, 10);
    /* A failed parse leaves *out alone. */
    v = 42;
    assert_int_equal(parse("65536", 65535, &v), -ERANGE);
    assert_int_equal(v, 42);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
