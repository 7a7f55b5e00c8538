"""Maintainer tools run from the repository (nox sessions and one-off commands), never
shipped in an image: the package versions (``constraints``) and the images' audit
(``audit``)."""
