/* Unit tests for jsonstr.c: quoting for log lines and config messages. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "lifeline/jsonstr.h"

static void test_escapes(void **state)
{
    (void)state;
    char buf[64];
    assert_int_equal(jsonstr_quote(buf, sizeof(buf), "a\"b\\c\n\x01", (size_t)-1), 21);
    assert_string_equal(buf, "\"a\\\"b\\\\c\\u000a\\u0001\"");
    assert_int_equal(jsonstr_quote(buf, sizeof(buf), "", (size_t)-1), 2);
    assert_string_equal(buf, "\"\"");
    /* UTF-8 passes as is. */
    jsonstr_quote(buf, sizeof(buf), "h\xc3\xa9", (size_t)-1);
    assert_string_equal(buf, "\"h\xc3\xa9\"");
}

static void test_cut(void **state)
{
    (void)state;
    char buf[64];
    /* At `max` output bytes the rest becomes "...". */
    jsonstr_quote(buf, sizeof(buf), "abcdefghij", 5);
    assert_string_equal(buf, "\"abcd...\"");
    /* Never inside a UTF-8 sequence: "é" is two bytes. */
    jsonstr_quote(buf, sizeof(buf), "abc\xc3\xa9xyz", 5);
    assert_string_equal(buf, "\"abc...\"");
    /* A small buffer: cut, quoted and NUL-terminated within it. */
    char small[16];
    size_t n = jsonstr_quote(small, sizeof(small), "0123456789abcdef", (size_t)-1);
    assert_int_equal(n, strlen(small));
    assert_true(n < sizeof(small));
    assert_string_equal(small, "\"0123456...\"");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_cut),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
