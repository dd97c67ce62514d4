"""lstmcli: train, evaluate and use recurrent text classifiers from the command line."""

__version__ = "0.1.0"
