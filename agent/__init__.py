"""The node agent: checkpoint warm workers with CRIU, restore them into new pods.

Map: ``criu`` (find/check CRIU), ``nsrun`` (run CRIU inside a container's
namespaces), ``checkpoint`` / ``restore`` (the phased pipelines), ``steps``
(hooks such as the CUDA step), ``store`` + ``digest`` (artifact store, verify),
``rootfs`` (writable-layer diff), ``daemon`` (the agent loop) over ``pods``
sources: ``kube`` (in-cluster) and ``local`` (a directory; ``sandbox``
containers), ``procfs`` (/proc readers), ``cli`` (``thaw snapshot``/``thaw agent``).
"""
