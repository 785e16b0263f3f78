/* qwen2: Qwen2 / Qwen2.5, DeepSeek-R1-Distill-Qwen. QKV biases, RoPE on half-split pairs. */
#include "../forward.h"

static enum triattn_status qwen2_load_layer(struct triattn_model * m, int il, char * err, size_t n) {
    return tri_model_bind_layer(m, il, /*qkv_bias=*/true, /*qk_norm=*/false, err, n);
}

static void qwen2_build_layer(tri_forward * f, int il) {
    const tri_layer * L = &f->m->w.layers[il];
    tri_blk_rmsnorm(f, f->x, &L->attn_norm, f->xn);
    tri_blk_qkv(f, L); /* adds the biases */
    tri_blk_rope_store(f, il);
    tri_blk_attention(f, il);
    tri_blk_attn_out(f, L);
    tri_blk_rmsnorm(f, f->x, &L->ffn_norm, f->xn);
    tri_blk_ffn_swiglu(f, L);
}

const tri_arch tri_arch_qwen2 = {
    .name         = "qwen2",
    .rope_pairing = TRI_ROPE_HALF,
    .load_hparams = NULL,
    .load_layer   = qwen2_load_layer,
    .build_layer  = qwen2_build_layer,
};
