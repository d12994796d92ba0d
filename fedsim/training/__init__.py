"""Real training at every simulated completion.

A scenario's ``training:`` section (:mod:`fedsim.training.config`) names a dataset, a partition
over the clients, a model and an update rule. :class:`fedsim.training.session.TrainingSession`
builds them; its :class:`~fedsim.training.observer.TrainingObserver` attaches to the engine: a
task snapshots the model version it is dispatched with (and takes its client's next
mini-batches), and when the task completes the client's gradient (or local steps) is computed
on that snapshot, together with those of the other in-flight tasks still lacking theirs
(:mod:`fedsim.training.batching`), and the rule updates the global model.
FedAvg, synchronous, runs its own round loop (:mod:`fedsim.training.fedavg`).

Importing this package, or validating a scenario, does not import torch.
"""
