"""Connecting a module's widgets to its parameter node in a way that works on every Slicer."""

PARAMETER_NAME_PROPERTY = "SlicerParameterName"  # slicer.parameterNodeWrapper's widget property


def connectParameterNodeGui(parameterNode, ui) -> int:
    """Connect the widgets of `ui` that name a parameter (the SlicerParameterName property) and
    return the tag `parameterNode.disconnectGui` needs. This is what `connectGui(ui)` does, but
    Slicer 5.8's connectGui returns None instead of the tag (fixed in 5.10): disconnectGui(None)
    then left the old connectors in place, and they rewrote the parameters (Device, Region
    mode) each time the user came back to the module. connectParametersToGui returns the tag
    on both."""
    widgets = {}
    for widget in vars(ui).values():
        name = widget.property(PARAMETER_NAME_PROPERTY) if hasattr(widget, "property") else None
        if name:
            widgets[str(name)] = widget
    return parameterNode.connectParametersToGui(widgets)
