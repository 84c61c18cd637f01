"""Packaging for gatewaykit."""

from setuptools import find_packages, setup

setup(
    name="gatewaykit",
    version="0.1.0",
    description="Reverse proxy, load balancer and API gateway on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["gatewaykit", "gatewaykit.*"])
    + ["twisted.plugins", "gatewaykit.conf"],
    # The shipped configs live in conf/ in the source tree and install as
    # gatewaykit/conf so that `twistd gatewaykit --demo` finds them anywhere.
    package_dir={"gatewaykit.conf": "conf"},
    package_data={
        "gatewaykit": ["py.typed"],
        "gatewaykit.conf": ["*.yaml", "public/*", "public/**/*"],
        "gatewaykit.state": ["lua/*.lua"],
        "gatewaykit.admin": ["static/*.html", "static/*.css", "static/*.js"],
        "twisted": ["plugins/gatewaykit_plugins.py"],
    },
    install_requires=[
        "twisted[tls,http2,websocket]>=24.7",
        "pyopenssl",
        "service-identity",
        "txredisapi",
        "hiredis>=2",  # txredisapi parses replies with it (in C) when installed
        "zope.interface",
        "httptools>=0.6",
        "h2>=4.1",  # HTTP/2 downstream; brings hpack and hyperframe
        "PyYAML>=6",
        "prometheus-client",
        "attrs>=23",
        "PyJWT[crypto]>=2.8",
        "libpass>=1.9",
        "bcrypt>=4",
        "brotli>=1.1",
    ],
    extras_require={
        "dev": ["autobahn", "hypothesis", "mypy", "mypy-zope", "ruff"],
    },
    entry_points={"console_scripts": ["gatewaykit = gatewaykit.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: Proxy Servers",
    ],
)
