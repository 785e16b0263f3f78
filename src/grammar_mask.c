/* Token trie (per model, built lazily) and the constrained sampling step (see grammar_mask.h). */
#include "grammar_mask.h"

#include "common.h"
#include "model.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>

/* Guards the lazy build of every model's trie (built once per model; the lock is held only then). */
static pthread_mutex_t g_trie_lock = PTHREAD_MUTEX_INITIALIZER;

typedef struct tok_bytes {
    const char * p;
    int32_t      n;
    int32_t      id;
} tok_bytes;

static int tok_cmp(const void * a, const void * b) {
    const tok_bytes * x = a, * y = b;
    int r = memcmp(x->p, y->p, (size_t) TRI_MIN(x->n, y->n));
    if (r) return r;
    if (x->n != y->n) return x->n < y->n ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static void trie_free(tri_token_trie * t) {
    if (!t) return;
    free(t->byte);
    free(t->depth);
    free(t->skip);
    free(t->tok_first);
    free(t->tok_n);
    free(t->toks);
    free(t->eog);
    free(t->all_plain);
    free(t->plain_ids);
    free(t->plain_upto);
    free(t);
}

static bool is_plain(uint8_t c) { return c >= 0x20 && c < 0x7F && c != '"' && c != '\\'; }

/* all_plain, plain_ids and plain_upto of a built trie with n tokens. */
static bool trie_index_plain(tri_token_trie * t, int32_t n) {
    const int32_t nn = t->n_nodes, md = t->max_depth;
    t->all_plain = malloc((size_t) nn + 1);
    t->plain_ids = malloc((size_t) (n + 1) * sizeof *t->plain_ids);
    t->plain_upto = calloc((size_t) md + 2, sizeof *t->plain_upto);
    int32_t * next_bad = malloc(((size_t) nn + 1) * sizeof *next_bad);
    int32_t * len_of = malloc(((size_t) n + 1) * sizeof *len_of); /* by sorted position: length, -1 not plain */
    uint8_t * path_plain = malloc((size_t) md + 1); /* [d]: the bytes of the current path up to depth d */
    if (!t->all_plain || !t->plain_ids || !t->plain_upto || !next_bad || !len_of || !path_plain) {
        free(next_bad);
        free(len_of);
        free(path_plain);
        return false;
    }
    path_plain[0] = 1;
    next_bad[nn] = nn;
    for (int32_t i = nn; i-- > 0;) next_bad[i] = is_plain(t->byte[i]) ? next_bad[i + 1] : i;
    for (int32_t k = 0; k < n; k++) len_of[k] = -1;
    for (int32_t i = 0; i < nn; i++) {
        const int32_t d = t->depth[i]; /* preorder: the path's node at depth d - 1 is the parent */
        t->all_plain[i] = path_plain[d - 1] && next_bad[i] >= t->skip[i];
        path_plain[d] = path_plain[d - 1] && is_plain(t->byte[i]);
        for (int32_t k = 0; k < t->tok_n[i]; k++) len_of[t->tok_first[i] + k] = path_plain[d] ? d : -1;
    }
    free(next_bad);
    free(path_plain);
    for (int32_t k = 0; k < n; k++) {
        if (len_of[k] >= 0) t->plain_upto[len_of[k] + 1]++;
    }
    for (int32_t l = 1; l <= md + 1; l++) t->plain_upto[l] += t->plain_upto[l - 1];
    /* plain_upto[L] is now the number with length < L: place by length, then shift to "<= L" */
    int32_t * at = malloc(((size_t) md + 2) * sizeof *at);
    if (!at) {
        free(len_of);
        return false;
    }
    memcpy(at, t->plain_upto, ((size_t) md + 2) * sizeof *at);
    for (int32_t k = 0; k < n; k++) {
        if (len_of[k] >= 0) t->plain_ids[at[len_of[k]]++] = t->toks[k];
    }
    for (int32_t l = 0; l <= md; l++) t->plain_upto[l] = t->plain_upto[l + 1];
    free(at);
    free(len_of);
    return true;
}

static tri_token_trie * trie_build(const tri_vocab * v) {
    const int32_t nv = tri_vocab_n_tokens(v);
    tok_bytes * tb = malloc((size_t) nv * sizeof *tb);
    tri_token_trie * t = calloc(1, sizeof *t);
    int32_t n = 0, n_eog = 0;
    size_t total = 0;
    for (int32_t id = 0; tb && t && id < nv; id++) {
        const char * p = NULL;
        int32_t len = 0;
        if (tri_vocab_piece(v, id, false, &p, &len) != TRIATTN_OK || len <= 0) {
            n_eog += tri_vocab_is_eog(v, id);
            continue;
        }
        tb[n++] = (tok_bytes) { p, len, id };
        total += (size_t) len;
    }
    if (t) {
        t->byte = malloc(total + 1);
        t->depth = malloc((total + 1) * sizeof *t->depth);
        t->skip = malloc((total + 1) * sizeof *t->skip);
        t->tok_first = malloc((total + 1) * sizeof *t->tok_first);
        t->tok_n = malloc((total + 1) * sizeof *t->tok_n);
        t->toks = malloc((size_t) (n + 1) * sizeof *t->toks);
        t->eog = malloc((size_t) (n_eog + 1) * sizeof *t->eog);
    }
    if (!tb || !t || !t->byte || !t->depth || !t->skip || !t->tok_first || !t->tok_n || !t->toks || !t->eog) {
        free(tb);
        trie_free(t);
        return NULL;
    }
    for (int32_t id = 0; id < nv; id++) {
        const char * p = NULL;
        int32_t len = 0;
        if ((tri_vocab_piece(v, id, false, &p, &len) != TRIATTN_OK || len <= 0) && tri_vocab_is_eog(v, id)) {
            t->eog[t->n_eog++] = id;
        }
    }
    qsort(tb, (size_t) n, sizeof *tb, tok_cmp);
    /* preorder: path[d] is the node at depth d + 1 on the current token's path */
    int32_t * path = malloc((size_t) (total + 1) * sizeof *path);
    if (!path) {
        free(tb);
        trie_free(t);
        return NULL;
    }
    int32_t plen = 0;
    const tok_bytes * prev = NULL;
    for (int32_t k = 0; k < n; k++) {
        const tok_bytes * cur = &tb[k];
        int32_t lcp = 0;
        if (prev) {
            while (lcp < prev->n && lcp < cur->n && prev->p[lcp] == cur->p[lcp]) lcp++;
        }
        while (plen > lcp) t->skip[path[--plen]] = t->n_nodes;
        for (int32_t d = plen; d < cur->n; d++) {
            const int32_t i = t->n_nodes++;
            t->byte[i] = (uint8_t) cur->p[d];
            t->depth[i] = d + 1;
            t->tok_first[i] = k;
            t->tok_n[i] = 0;
            path[plen++] = i;
        }
        t->max_depth = TRI_MAX(t->max_depth, cur->n);
        const int32_t end = path[cur->n - 1];
        if (t->tok_n[end] == 0) t->tok_first[end] = k;
        t->tok_n[end]++;
        t->toks[k] = cur->id;
        prev = cur;
    }
    while (plen > 0) t->skip[path[--plen]] = t->n_nodes;
    free(path);
    free(tb);
    return trie_index_plain(t, n) ? t : (trie_free(t), NULL);
}

const tri_token_trie * tri_token_trie_get(const struct triattn_model * m, char * err, size_t err_size) {
    pthread_mutex_lock(&g_trie_lock);
    /* the trie is a cache derived from the immutable vocabulary, created once under the lock */
    struct triattn_model * mm = (struct triattn_model *) m;
    if (!mm->token_trie) mm->token_trie = trie_build(m->vocab);
    const tri_token_trie * t = mm->token_trie;
    pthread_mutex_unlock(&g_trie_lock);
    if (!t) tri_fail(err, err_size, TRIATTN_ERR_OOM, "json_schema: out of memory for the token trie");
    return t;
}

void tri_token_trie_release(struct triattn_model * m) {
    trie_free(m->token_trie);
    m->token_trie = NULL;
}

int32_t tri_token_trie_mask(const tri_token_trie * t, const tri_schema * s, const tri_gstate * g,
                            tri_gstate * scratch, uint8_t * allow) {
    int32_t count = 0;
    tri_gstate_copy(&scratch[0], g);
    /* inside a string, the all-plain subtrees are the plain tokens that fit, marked by length */
    const int32_t room = tri_gstate_plain_room(s, g);
    if (room >= 0) {
        count = t->plain_upto[TRI_MIN(room, t->max_depth)];
        for (int32_t k = 0; k < count; k++) allow[t->plain_ids[k]] = 1;
    }
    for (int32_t i = 0; i < t->n_nodes;) {
        const int32_t d = t->depth[i];
        if (room >= 0 && t->all_plain[i]) {
            i = t->skip[i];
            continue;
        }
        tri_gstate_copy(&scratch[d], &scratch[d - 1]);
        if (!tri_gstate_step(s, &scratch[d], t->byte[i])) {
            i = t->skip[i];
            continue;
        }
        for (int32_t k = 0; k < t->tok_n[i]; k++) {
            const int32_t id = t->toks[t->tok_first[i] + k];
            count += !allow[id];
            allow[id] = 1;
        }
        i++;
    }
    return count;
}

/* ---- per-generation constraint ------------------------------------------------------------------- */

void tri_constraint_free(tri_constraint * c) {
    if (!c) return;
    tri_schema_free(c->schema);
    free(c->scratch);
    free(c->allow);
    free(c->masked);
    free(c);
}

enum triattn_status tri_constraint_create(const struct triattn_model * m, const char * schema_text,
                                          tri_constraint ** out, char * err, size_t err_size) {
    *out = NULL;
    tri_schema * schema = NULL;
    enum triattn_status st = tri_schema_compile(schema_text, strlen(schema_text), &schema, err, err_size);
    if (st != TRIATTN_OK) return st;
    const tri_token_trie * t = tri_token_trie_get(m, err, err_size);
    tri_constraint * c = calloc(1, sizeof *c);
    if (!t || !c) {
        tri_schema_free(schema);
        free(c);
        return t ? tri_fail(err, err_size, TRIATTN_ERR_OOM, "json_schema: out of memory") : TRIATTN_ERR_OOM;
    }
    c->model = m;
    c->trie = t;
    c->schema = schema;
    const size_t nv = (size_t) m->hp.n_vocab;
    c->scratch = malloc((size_t) (t->max_depth + 1) * sizeof *c->scratch);
    c->allow = malloc(nv);
    c->masked = malloc(nv * sizeof *c->masked);
    if (!c->scratch || !c->allow || !c->masked) {
        tri_constraint_free(c);
        return tri_fail(err, err_size, TRIATTN_ERR_OOM, "json_schema: out of memory");
    }
    tri_gstate_init(schema, &c->state);
    *out = c;
    return TRIATTN_OK;
}

/* True when token tok may come next (complete: the document so far is complete). */
static bool token_allowed(const tri_constraint * c, triattn_token tok, bool complete) {
    const tri_vocab * v = c->model->vocab;
    if (tok < 0 || tok >= c->model->hp.n_vocab) return false;
    if (tri_vocab_is_eog(v, tok)) return complete;
    const char * p = NULL;
    int32_t n = 0;
    if (tri_vocab_piece(v, tok, false, &p, &n) != TRIATTN_OK || n <= 0) return false;
    tri_gstate t;
    tri_gstate_copy(&t, &c->state);
    return tri_gstate_feed_bytes(c->schema, &t, p, n);
}

enum triattn_status tri_constraint_sample(tri_constraint * c, tri_sampler * sampler, const float * logits,
                                          triattn_token * out, bool * end, char * err, size_t err_size) {
    *end = false;
    const bool complete = tri_gstate_complete(c->schema, &c->state);
    if (complete && !tri_gstate_can_continue(c->schema, &c->state)) {
        *end = true;
        return TRIATTN_OK;
    }
    triattn_token tok = tri_sampler_sample(sampler, logits);
    if (!token_allowed(c, tok, complete)) {
        const int32_t nv = c->model->hp.n_vocab;
        memset(c->allow, 0, (size_t) nv);
        int32_t n = tri_token_trie_mask(c->trie, c->schema, &c->state, c->scratch, c->allow);
        for (int32_t i = 0; complete && i < c->trie->n_eog; i++) {
            c->allow[c->trie->eog[i]] = 1;
            n++;
        }
        if (n == 0) {
            return tri_fail(err, err_size, TRIATTN_ERR_INTERNAL, "json_schema: no token can continue the document");
        }
        for (int32_t i = 0; i < nv; i++) c->masked[i] = c->allow[i] ? logits[i] : -INFINITY;
        c->n_masks++;
        tok = tri_sampler_sample(sampler, c->masked);
        if (tok < 0 || !c->allow[tok]) {
            return tri_fail(err, err_size, TRIATTN_ERR_INTERNAL, "json_schema: every allowed token has a NaN logit");
        }
    }
    if (!tri_vocab_is_eog(c->model->vocab, tok)) {
        const char * p = NULL;
        int32_t n = 0;
        tri_vocab_piece(c->model->vocab, tok, false, &p, &n);
        tri_gstate_feed_bytes(c->schema, &c->state, p, n);
    }
    *out = tok;
    return TRIATTN_OK;
}
