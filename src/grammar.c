/* The schema-constrained JSON matcher (see grammar.h). Each frame is one open value:
 *   ROOT  the document: waiting for its value, then done;
 *   OBJ   an object: after '{', inside a key, before ':', after ':', after a value, after ',';
 *   ARR   an array: after '[', after an item, after ',';
 *   STR   a string after its opening quote (values, and object keys not named in the schema);
 *   NUM   a number; it ends at the first byte that cannot extend it, which is then fed to the parent;
 *   LIT   one of a sorted set of literal texts (enum/const values, true/false, null, named keys), tracked as the
 *         range [b, c) of literals sharing the a bytes read so far; like NUM it may end implicitly.
 * An anyOf union is an object frame whose first key is the discriminator; its value switches the frame to the
 * alternative object it selects.
 * A finished frame is popped and its parent advanced. Rules that avoid dead ends: ',' in an object only while a
 * key is still available, '}' only once every required key is present, ',' in an array only below maxItems,
 * ']' only from minItems; a closing quote only from minLength, string content only below maxLength; containers
 * inside "any value" only while a frame for their content still fits. */
#include "grammar.h"

#include "common.h"

enum tri_gkind { G_ROOT, G_OBJ, G_ARR, G_STR, G_NUM, G_LIT };
enum { O_OPEN, O_KEY, O_COLON, O_VALUE, O_NEXT, O_COMMA };
enum { A_OPEN, A_NEXT, A_COMMA };
enum { S_CHR, S_ESC, S_HEX, S_UTF };
/* number sub-states; complete in N_ZERO, N_INT, N_FRAC, N_EXP */
enum { N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP };
enum { F_SPACED = 1, F_KEY = 2, F_INTONLY = 4 };

#define TRI_NUM_INT_DIGITS  20
#define TRI_NUM_FRAC_DIGITS 20
#define TRI_NUM_EXP_DIGITS  2

void tri_gstate_init(const tri_schema * s, tri_gstate * g) {
    memset(&g->f[0], 0, sizeof g->f[0]);
    g->depth = 1;
    g->f[0].kind = G_ROOT;
    g->f[0].node = s->root;
}

static bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

static tri_gframe * push(tri_gstate * g, uint8_t kind, int32_t node) {
    if (g->depth >= TRI_SCHEMA_MAX_DEPTH) {
        return NULL;
    }
    tri_gframe * f = &g->f[g->depth++];
    memset(f, 0, sizeof *f);
    f->kind = kind;
    f->node = node;
    return f;
}

/* Narrows the literal range of f (a bytes matched, range [b, c)) by byte ch; false when nothing matches. */
static bool lit_narrow(const tri_schema * s, const tri_gframe * f, uint8_t ch, int32_t * lo, int32_t * hi) {
    int32_t i = f->b;
    while (i < f->c && (s->lit_len[i] <= f->a || (uint8_t) s->lits[i][f->a] < ch)) i++;
    int32_t j = i;
    while (j < f->c && s->lit_len[j] > f->a && (uint8_t) s->lits[j][f->a] == ch) j++;
    *lo = i;
    *hi = j;
    return j > i;
}

static bool lit_complete(const tri_schema * s, const tri_gframe * f) {
    return f->c > f->b && s->lit_len[f->b] == f->a;
}

static bool num_complete(const tri_gframe * f) {
    return f->st == N_ZERO || f->st == N_INT || f->st == N_FRAC || f->st == N_EXP;
}

/* Opens a value of node n at byte c (its first byte). */
static bool start_value(const tri_schema * s, tri_gstate * g, int32_t n, uint8_t c) {
    const tri_schema_node * nd = &s->nodes[n];
    tri_gframe * f;
    if (nd->lits.count > 0) {
        f = push(g, G_LIT, n);
        if (!f) return false;
        f->b = nd->lits.first;
        f->c = nd->lits.first + nd->lits.count;
        return true; /* the caller feeds c to the new frame */
    }
    const bool room = g->depth + 1 < TRI_SCHEMA_MAX_DEPTH; /* a container leaves room for a child frame */
    if ((c == '{' && (nd->types & TRI_T_OBJ) && room) || (c == '[' && (nd->types & TRI_T_ARR) && room)) {
        f = push(g, c == '{' ? G_OBJ : G_ARR, n);
        return f != NULL; /* consumed */
    }
    if (c == '"' && (nd->types & TRI_T_STR)) {
        return push(g, G_STR, n) != NULL;
    }
    if ((c == '-' || is_digit(c)) && (nd->types & (TRI_T_INT | TRI_T_NUM))) {
        f = push(g, G_NUM, n);
        if (!f) return false;
        f->flags = (nd->types & TRI_T_NUM) ? 0 : F_INTONLY;
        f->st = c == '-' ? N_MINUS : c == '0' ? N_ZERO : N_INT;
        f->a = c == '-' ? 0 : 1;
        return true;
    }
    if (((c == 't' || c == 'f') && (nd->types & TRI_T_BOOL)) || (c == 'n' && (nd->types & TRI_T_NULL))) {
        const tri_schema_node * ln = &s->nodes[c == 'n' ? s->node_null : s->node_bool];
        f = push(g, G_LIT, c == 'n' ? s->node_null : s->node_bool);
        if (!f) return false;
        f->b = ln->lits.first;
        f->c = ln->lits.first + ln->lits.count;
        return true;
    }
    return false;
}

/* True when the first byte c opens a new frame that still wants c fed to it (literals). */
static bool value_wants_byte(const tri_gstate * g) { return g->f[g->depth - 1].kind == G_LIT; }

/* Pops the finished top frame and advances its parent. */
static void finish(const tri_schema * s, tri_gstate * g) {
    g->depth--;
    tri_gframe * p = &g->f[g->depth - 1];
    switch (p->kind) {
    case G_ROOT: p->st = 1; break;
    case G_ARR: p->a++; p->st = A_NEXT; p->flags = 0; break;
    case G_OBJ:
        if (p->st == O_KEY) { /* a key outside the named properties */
            p->st = O_COLON;
            p->d = -1;
            p->b = s->nodes[p->node].additional;
        } else {
            const tri_schema_node * nd = &s->nodes[p->node];
            if (nd->n_alts > 0) { /* a union's discriminator value: continue as the alternative it selects */
                const tri_gframe * v = &g->f[g->depth];
                const int32_t i = nd->alts + v->b - s->nodes[s->prop_node[nd->props]].lits.first;
                p->node = s->alt_node[i];
                p->seen = 1ull << s->alt_key[i];
            }
            p->st = O_NEXT;
            p->flags = 0;
        }
        break;
    default: break;
    }
}

static bool obj_key_available(const tri_schema_node * nd, const tri_gframe * f) {
    const uint64_t all = nd->keys.count == 64 ? ~0ull : (1ull << nd->keys.count) - 1;
    return nd->additional >= 0 || (f->seen & all) != all;
}

static bool str_byte(const tri_schema * s, tri_gstate * g, tri_gframe * f, uint8_t c) {
    const bool key = f->flags & F_KEY;
    const int32_t max_len = key ? TRI_SCHEMA_MAX_KEY : s->nodes[f->node].max_len;
    const int32_t min_len = key ? 0 : s->nodes[f->node].min_len;
    switch (f->st) {
    case S_ESC: {
        if (c == 'u') {
            f->st = S_HEX;
            f->n = 0;
            f->hex = 0;
            return true;
        }
        if (!c || !strchr("\"\\/bfnrt", c)) return false;
        f->st = S_CHR;
        return true;
    }
    case S_HEX: {
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (v < 0) return false;
        f->hex = (uint16_t) (f->hex * 16 + v);
        f->n++;
        if (f->n == 2 && (f->hex & 0xF8) == 0xD8) return false; /* surrogates: one code point per escape */
        if (f->n == 4) f->st = S_CHR;
        return true;
    }
    case S_UTF:
        if (c < f->lo || c > f->hi) return false;
        f->lo = 0x80;
        f->hi = 0xBF;
        if (--f->n == 0) f->st = S_CHR;
        return true;
    default: break;
    }
    if (c == '"') {
        if (f->c < min_len) return false;
        finish(s, g);
        return true;
    }
    if (c < 0x20 || f->c >= max_len || (c == '\\' && key)) return false;
    if (c == '\\') {
        f->st = S_ESC;
    } else if (c >= 0x80) {
        /* UTF-8 lead byte: how many continuation bytes, and the range of the first one */
        if (c >= 0xC2 && c <= 0xDF) { f->n = 1; f->lo = 0x80; f->hi = 0xBF; }
        else if (c == 0xE0) { f->n = 2; f->lo = 0xA0; f->hi = 0xBF; }
        else if (c == 0xED) { f->n = 2; f->lo = 0x80; f->hi = 0x9F; }
        else if (c >= 0xE1 && c <= 0xEF) { f->n = 2; f->lo = 0x80; f->hi = 0xBF; }
        else if (c == 0xF0) { f->n = 3; f->lo = 0x90; f->hi = 0xBF; }
        else if (c >= 0xF1 && c <= 0xF3) { f->n = 3; f->lo = 0x80; f->hi = 0xBF; }
        else if (c == 0xF4) { f->n = 3; f->lo = 0x80; f->hi = 0x8F; }
        else return false;
        f->st = S_UTF;
    }
    f->c++;
    return true;
}

/* Returns 1 when consumed, 0 when rejected, -1 when the number ended and c goes to the parent. */
static int num_byte(tri_gframe * f, uint8_t c) {
    const bool intonly = f->flags & F_INTONLY;
    switch (f->st) {
    case N_MINUS:
        if (!is_digit(c)) return 0;
        f->st = c == '0' ? N_ZERO : N_INT;
        f->a = 1;
        return 1;
    case N_INT:
        if (is_digit(c)) {
            if (f->a >= TRI_NUM_INT_DIGITS) return 0;
            f->a++;
            return 1;
        }
        /* fall through */
    case N_ZERO:
        if (c == '.' && !intonly) { f->st = N_DOT; f->a = 0; return 1; }
        if ((c == 'e' || c == 'E') && !intonly) { f->st = N_E; f->a = 0; return 1; }
        return is_digit(c) ? 0 : -1;
    case N_DOT:
    case N_FRAC:
        if (is_digit(c)) {
            if (f->a >= TRI_NUM_FRAC_DIGITS) return 0;
            f->a++;
            f->st = N_FRAC;
            return 1;
        }
        if (f->st == N_DOT) return 0;
        if (c == 'e' || c == 'E') { f->st = N_E; f->a = 0; return 1; }
        return -1;
    case N_E:
        if (c == '+' || c == '-') { f->st = N_ESIGN; return 1; }
        /* fall through */
    case N_ESIGN:
    case N_EXP:
        if (is_digit(c)) {
            if (f->a >= TRI_NUM_EXP_DIGITS) return 0;
            f->a++;
            f->st = N_EXP;
            return 1;
        }
        return f->st == N_EXP ? -1 : 0;
    default: return 0;
    }
}

static bool obj_byte(const tri_schema * s, tri_gstate * g, tri_gframe * f, uint8_t c) {
    const tri_schema_node * nd = &s->nodes[f->node];
    switch (f->st) {
    case O_VALUE:
        if (c == ' ' && !(f->flags & F_SPACED)) { f->flags |= F_SPACED; return true; }
        if (!start_value(s, g, f->b, c)) return false;
        return !value_wants_byte(g) || tri_gstate_step(s, g, c);
    case O_COLON:
        if (c != ':') return false;
        f->st = O_VALUE;
        f->flags = 0;
        return true;
    case O_NEXT:
        if (c == ',' && obj_key_available(nd, f)) { f->st = O_COMMA; f->flags = 0; return true; }
        if (c == '}' && (nd->required & ~f->seen) == 0) { finish(s, g); return true; }
        return false;
    case O_KEY: {
        int32_t lo, hi;
        if (lit_narrow(s, f, c, &lo, &hi)) {
            if (c == '"' && s->lit_len[lo] == f->a + 1) { /* the closing quote of a named key */
                const int32_t k = lo - nd->keys.first;
                if (f->seen & (1ull << k)) return false;
                f->seen |= 1ull << k;
                f->st = O_COLON;
                f->d = k;
                f->b = s->prop_node[nd->props + k];
                return true;
            }
            bool unseen = nd->additional >= 0;
            for (int32_t i = lo; i < hi && !unseen; i++) unseen = !(f->seen & (1ull << (i - nd->keys.first)));
            if (!unseen) return false;
            f->a++;
            f->b = lo;
            f->c = hi;
            return true;
        }
        if (nd->additional < 0) return false;
        /* leaves the named keys: the bytes so far (after the quote) and c start a free key */
        const char * prefix = s->lits[f->b];
        const int32_t n = f->a;
        if (!push(g, G_STR, -1)) return false;
        g->f[g->depth - 1].flags = F_KEY;
        for (int32_t i = 1; i < n; i++) {
            if (!tri_gstate_step(s, g, (uint8_t) prefix[i])) return false;
        }
        return tri_gstate_step(s, g, c);
    }
    default: /* O_OPEN, O_COMMA */
        if (c == ' ' && f->st == O_COMMA && !(f->flags & F_SPACED)) { f->flags |= F_SPACED; return true; }
        if (c == '}' && f->st == O_OPEN && nd->required == 0) { finish(s, g); return true; }
        if (c != '"' || !obj_key_available(nd, f)) return false;
        f->st = O_KEY;
        f->a = 1;
        f->b = nd->keys.first;
        f->c = nd->keys.first + nd->keys.count;
        if (nd->keys.count > 0) return true;
        if (!push(g, G_STR, -1)) return false;
        g->f[g->depth - 1].flags = F_KEY;
        return true;
    }
}

static bool arr_byte(const tri_schema * s, tri_gstate * g, tri_gframe * f, uint8_t c) {
    const tri_schema_node * nd = &s->nodes[f->node];
    if (f->st == A_NEXT) {
        if (c == ',' && (nd->max_items < 0 || f->a < nd->max_items)) { f->st = A_COMMA; f->flags = 0; return true; }
        if (c == ']' && f->a >= nd->min_items) { finish(s, g); return true; }
        return false;
    }
    if (f->st == A_OPEN && c == ']') {
        if (nd->min_items > 0) return false;
        finish(s, g);
        return true;
    }
    if (c == ' ' && f->st == A_COMMA && !(f->flags & F_SPACED)) { f->flags |= F_SPACED; return true; }
    if (f->st == A_OPEN && nd->max_items == 0) return false;
    if (!start_value(s, g, nd->items, c)) return false;
    return !value_wants_byte(g) || tri_gstate_step(s, g, c);
}

bool tri_gstate_step(const tri_schema * s, tri_gstate * g, uint8_t c) {
    for (;;) {
        tri_gframe * f = &g->f[g->depth - 1];
        switch (f->kind) {
        case G_ROOT:
            if (f->st != 0 || !start_value(s, g, f->node, c)) return false;
            return !value_wants_byte(g) || tri_gstate_step(s, g, c);
        case G_OBJ: return obj_byte(s, g, f, c);
        case G_ARR: return arr_byte(s, g, f, c);
        case G_STR: return str_byte(s, g, f, c);
        case G_NUM: {
            int r = num_byte(f, c);
            if (r >= 0) return r == 1;
            finish(s, g);
            continue; /* c goes to the parent */
        }
        default: { /* G_LIT */
            int32_t lo, hi;
            if (lit_narrow(s, f, c, &lo, &hi)) {
                f->a++;
                f->b = lo;
                f->c = hi;
                return true;
            }
            if (!lit_complete(s, f)) return false;
            finish(s, g);
            continue;
        }
        }
    }
}

bool tri_gstate_feed(const tri_schema * s, tri_gstate * g, uint8_t c) {
    tri_gstate t;
    tri_gstate_copy(&t, g);
    if (!tri_gstate_step(s, &t, c)) return false;
    tri_gstate_copy(g, &t);
    return true;
}

bool tri_gstate_feed_bytes(const tri_schema * s, tri_gstate * g, const char * bytes, int32_t n) {
    tri_gstate t;
    tri_gstate_copy(&t, g);
    for (int32_t i = 0; i < n; i++) {
        if (!tri_gstate_step(s, &t, (uint8_t) bytes[i])) return false;
    }
    tri_gstate_copy(g, &t);
    return true;
}

int32_t tri_gstate_plain_room(const tri_schema * s, const tri_gstate * g) {
    const tri_gframe * f = &g->f[g->depth - 1];
    if (f->kind != G_STR || f->st != S_CHR) return -1;
    const int32_t max_len = (f->flags & F_KEY) ? TRI_SCHEMA_MAX_KEY : s->nodes[f->node].max_len;
    return TRI_MAX(0, max_len - f->c);
}

bool tri_gstate_complete(const tri_schema * s, const tri_gstate * g) {
    const tri_gframe * f = &g->f[g->depth - 1];
    if (f->kind == G_ROOT) return f->st == 1;
    if (g->depth != 2) return false;
    return (f->kind == G_NUM && num_complete(f)) || (f->kind == G_LIT && lit_complete(s, f));
}

bool tri_gstate_can_continue(const tri_schema * s, const tri_gstate * g) {
    for (int c = 0; c < 256; c++) {
        tri_gstate t;
        tri_gstate_copy(&t, g);
        if (tri_gstate_step(s, &t, (uint8_t) c)) return true;
    }
    return false;
}
