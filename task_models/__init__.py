"""The client task models: architectures (`models`) and their names (`registry`), local training
and distillation (`training`), temperature calibration (`calibration`), augmentation (`augment`),
the device they run on (`device`), and which node runs which model (`layout`, `node_config`).

The data they learn from is in `worlds/`."""
