"""The SGPSAM module's panels (Qt): one file per tab, each wiring its widgets to the module
logic. Only the Slicer application imports this package; everything it calls is Qt-free and
lives in ``SGPSAMSlicerLib``."""
