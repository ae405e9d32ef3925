"""Several experts on one model from local training runs (layer L4: it runs training and routing).

==========  ====================================================  ======
module      what                                                  needs
==========  ====================================================  ======
``local``   one expert per built-in task, trained here            torch
``runs``    experts from several ``edgedfl train`` run folders     torch
==========  ====================================================  ======

Each returns a :class:`~edgedfl.routing.router.RoutedModel` (K slots and their
latent codes) that :func:`~edgedfl.routing.bundle.save_bundle` writes and
``edgedfl export onnx`` exports: the stand-in for a swarm's output when no
swarm ran. Importing this package loads nothing heavy.
"""
