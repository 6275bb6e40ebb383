"""The browser UI (``editflow ui``): a Gradio app over :func:`editflow.edit`.

:mod:`.controls` holds what the app needs that is not Gradio (parameter controls from the params
dataclasses, mask and upload checks) so it is tested without a browser; :mod:`.app` builds the app.
Gradio is an optional dependency: ``pip install "editflow[ui]"``.
"""
