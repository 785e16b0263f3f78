/* llama: Llama 2/3.x, Mistral, TinyLlama, SmolLM, DeepSeek-R1-Distill-Llama.
 * RoPE on adjacent pairs (the GGUF converter permuted Q/K rows), optional rope_freqs factors. */
#include "../forward.h"

static enum triattn_status llama_load_layer(struct triattn_model * m, int il, char * err, size_t n) {
    return tri_model_bind_layer(m, il, /*qkv_bias=*/false, /*qk_norm=*/false, err, n);
}

static void llama_build_layer(tri_forward * f, int il) {
    const tri_layer * L = &f->m->w.layers[il];
    tri_blk_rmsnorm(f, f->x, &L->attn_norm, f->xn);
    tri_blk_qkv(f, L);
    tri_blk_rope_store(f, il);
    tri_blk_attention(f, il);
    tri_blk_attn_out(f, L);
    tri_blk_rmsnorm(f, f->x, &L->ffn_norm, f->xn);
    tri_blk_ffn_swiglu(f, L);
}

const tri_arch tri_arch_llama = {
    .name         = "llama",
    .rope_pairing = TRI_ROPE_ADJACENT,
    .load_hparams = NULL,
    .load_layer   = llama_load_layer,
    .build_layer  = llama_build_layer,
};
