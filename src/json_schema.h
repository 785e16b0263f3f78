/* A JSON Schema subset compiled into the node table that the grammar matcher (src/grammar.h) walks.
 *
 * Supported keywords: type (a name or a list of names), properties, required, additionalProperties (bool or
 * schema), items, enum, const, minLength, maxLength, minItems, maxItems, and anyOf in one form: a union of
 * object schemas told apart by a discriminator, a property that every alternative requires with const or enum
 * values that no two alternatives share (the first such property in byte order of its quoted name when several
 * qualify; the shape of a call to one of several tools). The annotations title,
 * description, $schema, $id, $comment, default, examples are ignored. Any other keyword is refused with
 * TRIATTN_ERR_UNSUPPORTED and a message such as "json_schema: unsupported keyword 'pattern' at $.properties.x".
 *
 * Generation policy (documented in README "Constrained output"):
 *   - compact JSON: no whitespace except one optional space after ':' and after ',';
 *   - object members in any order, each property at most once, every required one before '}';
 *     with "properties" and no additionalProperties, only the listed properties are generated (a subset of
 *     what the schema accepts); additionalProperties true or a schema allows other keys; a required key
 *     missing from properties takes any value (refused when additionalProperties is false);
 *   - enum / const values are generated as their compact serialisation;
 *   - a union's discriminator is generated first, and the rest follows the alternative it selects;
 *   - strings hold at most maxLength code points, TRI_SCHEMA_MAX_STRING when unset; numbers at most 20
 *     integer digits, 20 fraction digits and 2 exponent digits; nesting at most TRI_SCHEMA_MAX_DEPTH. */
#ifndef TRI_JSON_SCHEMA_H
#define TRI_JSON_SCHEMA_H

#include "triattn.h"

#include <stddef.h>
#include <stdint.h>

#define TRI_SCHEMA_MAX_STRING 256   /* code points of a string without maxLength */
#define TRI_SCHEMA_MAX_KEY    64    /* code points of an object key not named in properties */
#define TRI_SCHEMA_MAX_DEPTH  32    /* open containers + 1 */
#define TRI_SCHEMA_MAX_PROPS  64    /* properties of one object */

enum {
    TRI_T_NULL = 1, TRI_T_BOOL = 2, TRI_T_INT = 4, TRI_T_NUM = 8, TRI_T_STR = 16, TRI_T_ARR = 32, TRI_T_OBJ = 64,
    TRI_T_ANY = 127,
};

/* A literal set: byte strings sorted by memcmp order (a prefix sorts before its extensions). */
typedef struct tri_litset {
    int32_t first;  /* index into tri_schema.lits */
    int32_t count;
} tri_litset;

typedef struct tri_schema_node {
    uint32_t   types;        /* TRI_T_* bits this value may take */
    tri_litset lits;         /* enum/const: count > 0 means the value is one of these texts */
    /* strings */
    int32_t    min_len, max_len;
    /* arrays */
    int32_t    items;        /* node of every item */
    int32_t    min_items, max_items;  /* max_items < 0: unbounded */
    /* objects: keys are the quoted literal texts of the properties, sorted; prop_node[props + i] is the value
     * node of key i */
    tri_litset keys;
    int32_t    props;        /* index into tri_schema.prop_node / prop_required */
    int32_t    additional;   /* node of other keys' values, -1 = no other keys */
    uint64_t   required;     /* bit i: key i is required */
    /* anyOf unions: the node is an object whose one key is the discriminator, and whose value (literal i of the
     * value node) selects alternative alt_node[alts + i]; the frame then continues as that object, with its key
     * alt_key[alts + i] seen */
    int32_t    alts;
    int32_t    n_alts;       /* 0: not a union */
} tri_schema_node;

typedef struct tri_schema {
    tri_schema_node * nodes;
    int32_t           n_nodes, cap_nodes;
    int32_t           root;
    int32_t           node_bool, node_null;  /* literal nodes for true/false and null */
    /* literal texts */
    char **           lits;
    int32_t *         lit_len;
    int32_t           n_lits, cap_lits;
    int32_t *         prop_node;
    int32_t           n_props, cap_props;
    int32_t *         alt_node;   /* unions: alternative node and its discriminator key index, per value */
    int32_t *         alt_key;
    int32_t           n_alts, cap_alts;
} tri_schema;

/* Compiles schema text. Errors: TRIATTN_ERR_INVALID_ARG (malformed JSON or a keyword with a bad value, with
 * the byte offset or path), TRIATTN_ERR_UNSUPPORTED (keyword outside the subset, named with its path),
 * TRIATTN_ERR_OOM. On error *out is NULL. */
enum triattn_status tri_schema_compile(const char * text, size_t len, tri_schema ** out, char * err, size_t err_size);
void tri_schema_free(tri_schema * s);

#endif
