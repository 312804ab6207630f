"""The gfkernels ops, one module each: its public API, metadata checks, fake kernels and
autograd. Every backend (gfkernels.backends) implements each op's schema. The functions are
gfkernels.crop_resize, gfkernels.early_exit and gfkernels.gather_rows; here
``gfkernels.ops.crop_resize`` and ``gfkernels.ops.early_exit`` stay the modules that define them
(nothing here re-exports a function under its module's name)."""
