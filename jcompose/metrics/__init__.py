"""PyTorch-free evaluation metrics: FID/KID, SSIM, CLIP score, CLIP-I, DINO, LPIPS, LAION aesthetic.

Each metric module holds one network or formula; `torch_files` reads the published weight files.
"""
