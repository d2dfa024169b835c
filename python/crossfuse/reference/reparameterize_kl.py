"""Naive reparameterisation and KL term of a diagonal Gaussian: the oracle for reparameterize_kl."""
import torch


def reparameterize_kl(mu, logvar, eps):
    z = mu + torch.exp(0.5 * logvar) * eps
    kl = -0.5 * (1 + logvar - mu * mu - torch.exp(logvar)).sum(-1)
    return z, kl
