__title__ = "atrous-client"
__version__ = "0.1.0"
