/* gemma3: Gemma 3 text models. Token embeddings scaled by sqrt(n_embd); RMSNorm before and after both the
 * attention and the FFN; per-head RMSNorm of q and k; GeGLU FFN (tanh GELU); RoPE on half-split pairs.
 * Five of every six layers attend over a sliding window with their own RoPE base; every sixth layer
 * ((il + 1) % 6 == 0) is global. The GGUF converter stores the norm weights with Gemma's "1 +" already
 * added, so every norm here is a plain x * w RMSNorm. Output embedding tied, no logit soft-capping. */
#include "../forward.h"
#include "../common.h"

#include <math.h>

#define TRI_GEMMA3_SWA_PERIOD   6
#define TRI_GEMMA3_SWA_ROPE_BASE 10000.0f

static enum triattn_status gemma3_load_hparams(struct triattn_model * m, char * err, size_t n) {
    tri_hparams * hp = &m->hp;
    hp->embd_scale         = sqrtf((float) hp->n_embd);
    hp->swa_period         = TRI_GEMMA3_SWA_PERIOD;
    hp->rope_freq_base_swa = TRI_GEMMA3_SWA_ROPE_BASE;
    hp->n_swa              = 0;
    enum triattn_status st = tri_model_arch_u32(m, "attention.sliding_window", true, &hp->n_swa, err, n);
    if (st == TRIATTN_OK) {
        st = tri_model_arch_f32(m, "rope.freq_base_swa", true, &hp->rope_freq_base_swa, err, n);
    }
    if (st != TRIATTN_OK) {
        return st;
    }
    if (hp->n_swa < 0 || !(hp->rope_freq_base_swa > 0.0f)) {
        return tri_fail(err, n, TRIATTN_ERR_FORMAT, "gemma3: invalid sliding window %d or local RoPE base %g", hp->n_swa,
                        hp->rope_freq_base_swa);
    }
    /* query_pre_attn_scalar is head_dim in every Gemma 3 size but 27B (62 layers), where it is n_embd / n_head. */
    const int32_t qpas = hp->n_layer == 62 ? hp->n_embd / hp->n_head : hp->head_dim;
    hp->attn_scale = 1.0f / sqrtf((float) qpas);
    return TRIATTN_OK;
}

static enum triattn_status gemma3_load_layer(struct triattn_model * m, int il, char * err, size_t n) {
    tri_layer * L = &m->w.layers[il];
    enum triattn_status st = tri_model_bind_layer(m, il, /*qkv_bias=*/false, /*qk_norm=*/true, err, n);
    if (st == TRIATTN_OK) {
        st = tri_model_layer_tensor(m, &L->post_attn_norm, il, "post_attention_norm.weight", m->hp.n_embd, 1, false,
                                    err, n);
    }
    if (st == TRIATTN_OK) {
        st = tri_model_layer_tensor(m, &L->post_ffn_norm, il, "post_ffw_norm.weight", m->hp.n_embd, 1, false, err, n);
    }
    return st;
}

static void gemma3_build_layer(tri_forward * f, int il) {
    const tri_layer * L = &f->m->w.layers[il];
    tri_blk_rmsnorm(f, f->x, &L->attn_norm, f->xn);
    tri_blk_qkv(f, L);
    tri_blk_qk_norm(f, L);
    tri_blk_rope_store(f, il);   /* local RoPE base and window trimming on sliding-window layers */
    tri_blk_attention(f, il);    /* masked to the window on sliding-window layers */
    tri_blk_attn_out(f, L);      /* post_attn_norm before the residual add */
    tri_blk_rmsnorm(f, f->x, &L->ffn_norm, f->xn);
    tri_blk_ffn_geglu(f, L);     /* post_ffn_norm before the residual add */
}

const tri_arch tri_arch_gemma3 = {
    .name         = "gemma3",
    .rope_pairing = TRI_ROPE_HALF,
    .load_hparams = gemma3_load_hparams,
    .load_layer   = gemma3_load_layer,
    .build_layer  = gemma3_build_layer,
    .chat_format  = "gemma", /* pretrained checkpoints ship without a template but know the turn markers */
};
