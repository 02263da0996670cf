"""The subjects of the book: the systems its chapters build, train and measure.

``matrix`` (GEMM workloads and MLPs at the limits of batch and memory), ``ode`` and
``neural_ode`` (ResNets as discretised ODEs, Neural ODEs and their solvers), ``sde`` and
``diffusion`` (Neural SDEs, score-based diffusion), ``ssm`` (state-space layers and the
selective scan), ``ntk`` (the neural tangent kernel), ``heavy_ball`` (training with momentum
as a damped oscillator) and ``cosmo`` (the scalar-field universe dual to momentum descent).
"""
