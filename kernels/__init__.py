"""crossfuse's Triton kernels (installed as crossfuse.kernels). Each module exposes `launch` and the
`AOT_SPECS` (every config its launcher can choose) that tests/test_aot_compile.py compiles for sm_80/sm_90."""
KERNEL_MODULES = ("rnn_cell", "lstm_cell", "gru_cell", "cross_attention", "contrastive_loss", "reparameterize_kl",
                  "fusions", "rnn")
