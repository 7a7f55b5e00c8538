"""Labels gpuhub writes on every lab container: Docker is the record of who holds what."""

PROJECT = "gpuhub.project"
USER = "gpuhub.user"
GPUS = "gpuhub.gpus"
SINCE = "gpuhub.since"
PROFILE = "gpuhub.profile"
