/* A tool call's arguments against the tool's "parameters": JSON Schema validation over slices of JSON text,
 * used to tell a call a model wrote without its chat format's markers from JSON that merely looks like one.
 *
 * Checked keywords: type (a name or a list), enum, const, properties, required, additionalProperties, items,
 * minItems, maxItems, minLength, maxLength, minimum, maximum, exclusiveMinimum, exclusiveMaximum (numbers),
 * anyOf, allOf, oneOf, not. Other keywords ($ref, pattern, format, ...) do not constrain: a value is rejected
 * only for what the schema is known to forbid. */
#include "chat_tools.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool is_number(tri_js v) { return v.n > 0 && (v.p[0] == '-' || (v.p[0] >= '0' && v.p[0] <= '9')); }

/* A valid JSON number's value (its text is at most a few hundred bytes in practice; longer ones are cut). */
static double number_of(tri_js v) {
    char   b[128];
    char * t = v.n < sizeof b ? b : malloc(v.n + 1);  /* the whole text: a long one cut short reads as another value */
    if (!t) {
        return NAN;
    }
    memcpy(t, v.p, v.n);
    t[v.n] = '\0';
    const double x = strtod(t, NULL);
    if (t != b) {
        free(t);
    }
    return x;
}

/* Whole numbers (1, -3, 2.0, 1e3) are JSON Schema integers. */
static bool is_integer(tri_js v) {
    if (!is_number(v)) {
        return false;
    }
    if (!memchr(v.p, '.', v.n) && !memchr(v.p, 'e', v.n) && !memchr(v.p, 'E', v.n)) {
        return true;
    }
    double x = number_of(v);
    return isfinite(x) && x == floor(x);
}

static bool type_is(tri_js v, tri_js name) {
    char c = v.p[0];
    return (tri_js_str_eq(name, "object") && c == '{') || (tri_js_str_eq(name, "array") && c == '[') ||
           (tri_js_str_eq(name, "string") && c == '"') || (tri_js_str_eq(name, "number") && is_number(v)) ||
           (tri_js_str_eq(name, "integer") && is_integer(v)) ||
           (tri_js_str_eq(name, "boolean") && (c == 't' || c == 'f')) || (tri_js_str_eq(name, "null") && c == 'n');
}

/* Member `key` (a JSON string as written) of obj. */
/* Member of obj whose key equals the JSON string key once both are unescaped (the last duplicate wins; keys may
 * hold \u0000). */
static bool get_member(tri_js obj, tri_js key, tri_js * value) {
    tri_js_iter it = tri_js_iter_of(obj);
    tri_js      k, v;
    bool        found = false;
    while (tri_js_next(&it, &k, &v)) {
        if (tri_js_str_same(k, key)) {
            *value = v;
            found  = true;
        }
    }
    return found;
}

static size_t count_items(tri_js container) {
    tri_js_iter it = tri_js_iter_of(container);
    tri_js      k, v;
    size_t      n = 0;
    while (tri_js_next(&it, container.p[0] == '{' ? &k : NULL, &v)) {
        n++;
    }
    return n;
}

bool tri_js_equal(tri_js a, tri_js b) {
    char ca = a.p[0], cb = b.p[0];
    if (is_number(a) || is_number(b)) {
        return is_number(a) && is_number(b) && number_of(a) == number_of(b);
    }
    if (ca != cb) {
        return false;
    }
    if (ca == '"') {
        return tri_js_str_same(a, b);
    }
    if (ca != '{' && ca != '[') {
        return a.n == b.n && memcmp(a.p, b.p, a.n) == 0;  /* true, false, null */
    }
    tri_js_iter ia = tri_js_iter_of(a), ib = tri_js_iter_of(b);
    tri_js      ka, kb, va, vb;
    if (ca == '[') {
        if (count_items(a) != count_items(b)) {
            return false;
        }
        while (tri_js_next(&ia, NULL, &va) && tri_js_next(&ib, NULL, &vb)) {
            if (!tri_js_equal(va, vb)) {
                return false;
            }
        }
        return true;
    }
    /* the same keys with equal values, a key's value being its last duplicate's on either side */
    while (tri_js_next(&ia, &ka, &va)) {
        if (!get_member(a, ka, &va) || !get_member(b, ka, &vb) || !tri_js_equal(va, vb)) {
            return false;
        }
    }
    while (tri_js_next(&ib, &kb, &vb)) {
        if (!get_member(a, kb, &va)) {
            return false;
        }
    }
    return true;
}


/* The number in member key of schema, or false when there is none. */
static bool limit(tri_js schema, const char * key, double * x) {
    tri_js v;
    if (!tri_js_get(schema, key, &v) || !is_number(v)) {
        return false;
    }
    *x = number_of(v);
    return true;
}

static bool in_bounds(tri_js schema, const char * lo, const char * hi, double x) {
    double b;
    return !(limit(schema, lo, &b) && x < b) && !(limit(schema, hi, &b) && x > b);
}

static bool valid_object(tri_js v, tri_js schema) {
    tri_js props = { "{}", 2 }, extra, req, k, m, s;
    tri_js_get(schema, "properties", &props);
    bool has_extra = tri_js_get(schema, "additionalProperties", &extra);
    tri_js_iter it = tri_js_iter_of(v);
    while (tri_js_next(&it, &k, &m)) {
        if (props.p[0] == '{' && get_member(props, k, &s)) {
            if (!tri_js_valid(m, s)) {
                return false;
            }
        } else if (has_extra && !tri_js_valid(m, extra)) {
            return false;
        }
    }
    if (tri_js_get(schema, "required", &req) && req.p[0] == '[') {
        tri_js_iter r = tri_js_iter_of(req);
        while (tri_js_next(&r, NULL, &k)) {
            if (k.p[0] == '"' && !get_member(v, k, &m)) {
                return false;
            }
        }
    }
    return true;
}

static bool valid_array(tri_js v, tri_js schema) {
    tri_js items, e;
    double n = (double) count_items(v);
    if (!in_bounds(schema, "minItems", "maxItems", n)) {
        return false;
    }
    if (tri_js_get(schema, "items", &items) && items.p[0] != '[') {  /* a list of schemas: a tuple, unchecked */
        tri_js_iter it = tri_js_iter_of(v);
        while (tri_js_next(&it, NULL, &e)) {
            if (!tri_js_valid(e, items)) {
                return false;
            }
        }
    }
    return true;
}

static bool valid_number(tri_js v, tri_js schema) {
    double x = number_of(v), b;
    return in_bounds(schema, "minimum", "maximum", x) && !(limit(schema, "exclusiveMinimum", &b) && x <= b) &&
           !(limit(schema, "exclusiveMaximum", &b) && x >= b);
}

/* How many schemas of the array list v satisfies (list not an array: -1). */
static long n_satisfied(tri_js v, tri_js list) {
    if (list.p[0] != '[') {
        return -1;
    }
    tri_js_iter it = tri_js_iter_of(list);
    tri_js      s;
    long        n = 0;
    while (tri_js_next(&it, NULL, &s)) {
        n += tri_js_valid(v, s);
    }
    return n;
}

bool tri_js_valid(tri_js v, tri_js schema) {
    if (schema.p[0] != '{') {
        return schema.p[0] != 'f';  /* true (or anything that is not a schema) accepts, false rejects */
    }
    tri_js t, x;
    if (tri_js_get(schema, "type", &t)) {
        bool ok = t.p[0] == '"' ? type_is(v, t) : t.p[0] != '[';
        tri_js_iter it = tri_js_iter_of(t);
        while (t.p[0] == '[' && !ok && tri_js_next(&it, NULL, &x)) {
            ok = type_is(v, x);
        }
        if (!ok) {
            return false;
        }
    }
    if (tri_js_get(schema, "enum", &t) && t.p[0] == '[') {
        bool ok = false;
        tri_js_iter it = tri_js_iter_of(t);
        while (!ok && tri_js_next(&it, NULL, &x)) {
            ok = tri_js_equal(v, x);
        }
        if (!ok) {
            return false;
        }
    }
    if (tri_js_get(schema, "const", &t) && !tri_js_equal(v, t)) {
        return false;
    }
    long n;
    if ((tri_js_get(schema, "anyOf", &t) && n_satisfied(v, t) == 0) ||
        (tri_js_get(schema, "oneOf", &t) && (n = n_satisfied(v, t)) >= 0 && n != 1) ||
        (tri_js_get(schema, "allOf", &t) && (n = n_satisfied(v, t)) >= 0 && (size_t) n != count_items(t)) ||
        (tri_js_get(schema, "not", &t) && t.p[0] == '{' && tri_js_valid(v, t))) {
        return false;
    }
    switch (v.p[0]) {
        case '{': return valid_object(v, schema);
        case '[': return valid_array(v, schema);
        case '"': return in_bounds(schema, "minLength", "maxLength", (double) tri_js_str_chars(v));
        default:  return !is_number(v) || valid_number(v, schema);
    }
}
