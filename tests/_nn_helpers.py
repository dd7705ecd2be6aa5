"""Finite-width kernels of sampled `tensorprograms.nn` networks, written for tests."""

import torch


def empirical_ntk(f, x):
    """J J^T with J[a] = d f(x_a) / d theta (all parameters), by torch.autograd."""
    params = list(f.parameters())
    rows = []
    for a in range(x.shape[0]):
        grads = torch.autograd.grad(f(x[a : a + 1]).sum(), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    jac = torch.stack(rows)
    return (jac @ jac.T).detach()


def empirical_nngp(net, x, width, seeds, W_std, b_std):
    """Monte Carlo NNGP over seeds, the Gaussian readout Dense(1) integrated exactly.

    Given the penultimate features F (N, n) of one sampled network, the output
    covariance over the readout weights is W_std^2 F F^T / n + b_std^2; averaging it
    over seeds has far less variance than averaging products of outputs.
    """
    total = 0.0
    with torch.no_grad():
        for seed in seeds:
            f = net.sample(width, seed=seed, input_shape=tuple(x.shape[1:]))
            feats = x
            for layer in f.body.layers[:-1]:
                feats = layer(feats)
            feats = feats.reshape(x.shape[0], -1)
            total = total + W_std**2 * feats @ feats.T / feats.shape[1] + b_std**2
    return total / len(seeds)
