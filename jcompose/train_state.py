"""The train state and the one jitted step every method trains with, for one model or several.

state = {step, params, opt_state, rng, nonfinite[, ema]}. With several independent models (one per
DreamCom object, or the members of a small sweep: `method.num_models` = K > 1) every leaf gets a
leading model axis, the single-model step is vmapped over it (frozen modules are shared), and that
axis is split over the devices where K divides their number, so each device holds its own models'
weights and Adam moments and no gradient crosses devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from jcompose import parallel


def _schedule(config, peak: float) -> optax.Schedule:
    o = config.optim
    if o.schedule == "cosine" and o.warmup_steps:
        return optax.warmup_cosine_decay_schedule(0.0, peak, o.warmup_steps, config.train.steps)
    if o.schedule == "cosine":  # no warm-up: the first step already uses the peak rate
        return optax.cosine_decay_schedule(peak, config.train.steps)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, o.warmup_steps), optax.constant_schedule(peak)],
                                [o.warmup_steps]) if o.warmup_steps else optax.constant_schedule(peak)


def make_optimizer(config, traced_lr: bool = False) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW (after global-norm clipping) and its learning-rate schedule: linear warm-up from 0 over
    `optim.warmup_steps`, then constant or cosine decay to 0 at `train.steps`.

    traced_lr: the peak rate is a value in the optimizer state (`peak_lr`, optax.inject_hyperparams) times
    the schedule's shape, so K models vmapped in one program can each have their own (packed sweeps,
    `set_learning_rates`); the state tree then differs from the default's, which single runs keep.
    """
    o = config.optim
    lr = _schedule(config, o.lr)
    if traced_lr:
        shape = _schedule(config, 1.0)
        adamw = optax.inject_hyperparams(lambda peak_lr: optax.adamw(
            lambda count: peak_lr * shape(count), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))(
                peak_lr=o.lr)
    else:
        adamw = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
    tx = optax.chain(optax.clip_by_global_norm(o.clip_norm) if o.clip_norm else optax.identity(), adamw)
    return tx, lr


def set_learning_rates(opt_state, rates):
    """The optimizer state of K models (`make_optimizer(traced_lr=True)`, vmapped) with model k's peak
    learning rate set to rates[k]."""
    injected = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)
    found = []

    def one(state):
        if isinstance(state, injected) and "peak_lr" in state.hyperparams:
            found.append(state)
            return state._replace(hyperparams=dict(state.hyperparams, peak_lr=jnp.asarray(rates, jnp.float32)))
        return state

    new = jax.tree_util.tree_map(one, opt_state, is_leaf=lambda s: isinstance(s, injected))
    if len(found) != 1:
        raise ValueError(f"set_learning_rates: expected one injected peak_lr in the optimizer state, found {len(found)}")
    return new


def make_train_step(method, tx, config):
    """(state, frozen, batch) -> (state, metrics): one optimizer step over `grad_accum` micro-batches."""
    accum = config.train.grad_accum
    ema_decay = config.train.ema_decay

    def loss_fn(params, frozen, batch, rng):
        return method.loss(params, frozen, batch, rng)

    if config.train.remat:
        loss_fn = jax.checkpoint(loss_fn)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state, frozen, batch):
        rng, step_rng = jax.random.split(state["rng"])
        if accum == 1:
            (loss, metrics), grads = grad_fn(state["params"], frozen, batch, step_rng)
        else:
            # Micro-batch a = rows a, a + accum, a + 2 accum, ...: every device's block of the sharded batch
            # holds its share of each micro-batch, so the split is local. (Contiguous micro-batches, rows
            # [a B/accum, (a + 1) B/accum), lie on a subset of the devices: XLA all-gathered the batch and the
            # step's temporaries grew, e.g. AnyScene on v5e-8 with 2 micro-batches from 7.4 to > 20 GiB.)
            micro = jax.tree_util.tree_map(lambda x: x.reshape((-1, accum) + x.shape[1:]).swapaxes(0, 1), batch)

            def body(carry, inputs):
                micro_batch, key = inputs
                (loss, metrics), grads = grad_fn(state["params"], frozen, micro_batch, key)
                return jax.tree_util.tree_map(jnp.add, carry, (loss, metrics, grads)), None

            zeros = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(
                lambda: grad_fn(state["params"], frozen, jax.tree_util.tree_map(lambda x: x[0], micro), step_rng)))
            zeros = (zeros[0][0], zeros[0][1], zeros[1])
            total, _ = jax.lax.scan(body, zeros, (micro, jax.random.split(step_rng, accum)))
            loss, metrics, grads = jax.tree_util.tree_map(lambda x: x / accum, total)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = dict(state, params=params, opt_state=opt_state)
        if ema_decay:
            new["ema"] = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state["ema"], params)
        # A non-finite step is not applied (params, optimizer and EMA stay), only counted.
        new = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, state)
        new.update(step=state["step"] + 1, rng=rng, nonfinite=state["nonfinite"] + (~finite).astype(jnp.int32))
        return new, dict(metrics, loss=loss, grad_norm=grad_norm)

    return step


def num_models(method) -> int:
    """How many independent models a method trains at once (1 unless it says otherwise)."""
    return int(getattr(method, "num_models", 1))


def _fresh(params, tx, config) -> dict:
    state = {"step": jnp.array(0, jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.PRNGKey(config.seed), "nonfinite": jnp.array(0, jnp.int32)}
    if config.train.ema_decay:
        state["ema"] = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), params)
    return state


def init_state(config, method, mesh, workdir: str, before_placement=None):
    """The method's models as a fresh train state and frozen tree, placed on the mesh.

    Returns (state, frozen, tx, lr_schedule). One model: params, optimizer moments, EMA and frozen
    modules replicated, or split over 'fsdp'. K models: K copies of the initial params (each model
    starts from the same weights and seed, so model k trains as it would alone), the model axis split
    over the devices when K divides their number (else replicated); frozen modules as for one model.
    `before_placement()`, if given, runs once the method's models are loaded and before any copy,
    optimizer moment or EMA exists (data a method makes with its models gets the devices' memory).
    """
    params, frozen = method.init(workdir)
    if before_placement is not None:
        before_placement()
    # The step donates the state's buffers: params and EMA get their own copies, so none aliases
    # another state leaf or a frozen module (a method may hand out views of loaded weights).
    params = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), params)
    # A packed sweep's models may each have their own learning rate (the method lists them).
    rates = getattr(method, "model_learning_rates", None)
    tx, lr_schedule = make_optimizer(config, traced_lr=rates is not None)
    k = num_models(method)
    if k == 1:
        state = _fresh(params, tx, config)
        shardings = parallel.fsdp_shardings(state, mesh, config.mesh.fsdp_min_size)
    else:
        stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x] * k), params)
        state = jax.vmap(lambda p: _fresh(p, tx, config))(stacked)
        if rates is not None:
            state["opt_state"] = set_learning_rates(state["opt_state"], rates)
        shardings = parallel.model_shardings(state, mesh)
    state = jax.device_put(state, shardings)
    frozen = jax.device_put(frozen, parallel.fsdp_shardings(frozen, mesh, config.mesh.fsdp_min_size))
    return state, frozen, tx, lr_schedule


def in_mesh(fn, mesh):
    """`fn` traced with `mesh` as the mesh context: kernels that must run per device (the Pallas attention
    kernel on TPU, `jcompose.attention_kernels`) wrap themselves in `shard_map` over it."""
    def traced_in_mesh(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)

    return traced_in_mesh


def make_step(method, tx, config, mesh):
    """The jit-able (state, frozen, batch) -> (state, metrics) of the run: vmapped over the model axis
    (state, batch and metrics have a leading K) when the method trains several models.

    With the model axis split over the devices, the vmapped step runs under `shard_map`: each device
    steps its own models on its own batches, with the frozen modules replicated. (Leaving the split to
    XLA's automatic partitioning of the vmapped step computed wrong UNet outputs on CPU, jax 0.10.2;
    `tests/test_multimodel.py` compares with each model trained alone.)
    """
    step = make_train_step(method, tx, config)
    k = num_models(method)
    if k == 1:
        return in_mesh(step, mesh)
    vstep = jax.vmap(step, in_axes=(0, None, 0))
    spec = parallel.model_axis_spec(mesh, k)
    if spec == P():
        return vstep
    return jax.shard_map(vstep, mesh=mesh, in_specs=(spec, P(), spec), out_specs=(spec, spec), check_vma=False)


def make_sampler(method, mesh):
    """The jit-able (params, frozen, batch, rng) -> images of the run's sample grids: per model (a leading K
    on params, batch and images) when the method trains several, split over the devices like the step."""
    k = num_models(method)
    if k == 1:
        return in_mesh(method.sample, mesh)
    vsample = jax.vmap(method.sample, in_axes=(0, None, 0, None))
    spec = parallel.model_axis_spec(mesh, k)
    if spec == P():
        return vsample
    return jax.shard_map(vsample, mesh=mesh, in_specs=(spec, P(), spec, P()), out_specs=spec, check_vma=False)
