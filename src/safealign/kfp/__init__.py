"""Kubeflow Pipelines: the same stages as DVC's, run as a KFP pipeline on a cluster.

Owns: the pipeline definition (``pipeline``: the DAG, its parameters, the calibration gate, GPU placement),
the components (``components``: one thin lightweight component per stage), the runtime a step runs in
(``stage``: settings from the pipeline's parameters, artifact folders bridged to ``Layout``), what a cluster
run needs (``deploy``: images, cluster defaults, the ``params`` JSON) and the client (``client``: compile,
submit, schedule). The stages themselves live below it (data, reward, policy, evaluation, registry); this
package only places and wires them. The compiled pipelines stay at pipelines/align.yaml and
pipelines/align-gpu.yaml, where the image and the CronJob read them.
"""
