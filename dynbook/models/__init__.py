"""The subjects of the book: the systems its chapters build, train and measure, in book order.

``matrix`` (GEMM workloads and MLPs at the limits of batch and memory), ``ode`` and
``neural_ode`` (ResNets as discretised ODEs, Neural ODEs and their solvers), ``sde`` and
``diffusion`` (Neural SDEs, score-based diffusion), ``ssm`` (state-space layers and the
selective scan), ``pinn``, ``deeponet`` and ``ned`` (physics-informed networks, operator
learning, Neural Energy Descent), ``deep_linear``, ``ntk``, ``heavy_ball`` and
``learning_dynamics`` (training as a dynamical system: Saxe's exact dynamics, the neural
tangent kernel, momentum as a damped oscillator, SGD as an SDE, the edge of stability),
``chaos`` and ``reservoir`` (chaotic attractors, Lyapunov exponents, echo state networks and
their forecasters), ``quantum`` and ``sequence_maps`` (matrix and wave mechanics of one
spectrum; one sequence map as a matrix, a convolution and a scan), ``lmul`` and
``fixed_point`` (cheaper arithmetic: L-Mul, low-precision formats, integer training) and
``cosmo`` (the scalar-field universe dual to momentum descent).
"""
