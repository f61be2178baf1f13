#!/usr/bin/env python3
"""A SAML 2.0 service provider made with PyPI's pysaml2, for the tests: it trusts the IdP
metadata it is given, makes AuthnRequests (HTTP-Redirect binding) and parses and validates
Responses (HTTP-POST binding: signatures checked with xmlsec1, audience, destination,
InResponseTo, validity). It prints JSON on standard output.

  saml_sp.py request  --metadata FILE --entity-id ID --acs URL [--relay-state S]
      -> {"url": "<IdP SSO URL with SAMLRequest>", "request_id": "..."}
  saml_sp.py response --metadata FILE --entity-id ID --acs URL --response-file FILE
                      [--request-id ID] [--want-response-signed]
      -> {"name_id": "...", "name_id_format": "...", "issuer": "...", "attributes": {...}}
      or exit 1 with {"error": "..."} when pysaml2 refuses the Response.
"""
import argparse
import json
import shutil
import sys

from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.client import Saml2Client
from saml2.config import SPConfig


def client(args):
    conf = {
        "entityid": args.entity_id,
        "xmlsec_binary": shutil.which("xmlsec1") or "/usr/bin/xmlsec1",
        "metadata": {"local": [args.metadata]},
        "allow_unknown_attributes": True,
        "service": {
            "sp": {
                "endpoints": {"assertion_consumer_service": [(args.acs, BINDING_HTTP_POST)]},
                "allow_unsolicited": True,
                "authn_requests_signed": False,
                "want_assertions_signed": True,
                "want_response_signed": bool(getattr(args, "want_response_signed", False)),
                "allow_unknown_attributes": True,
            }
        },
    }
    config = SPConfig()
    config.load(conf)
    return Saml2Client(config=config)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["request", "response"])
    p.add_argument("--metadata", required=True)
    p.add_argument("--entity-id", required=True)
    p.add_argument("--acs", required=True)
    p.add_argument("--relay-state", default="")
    p.add_argument("--response-file")
    p.add_argument("--request-id")
    p.add_argument("--want-response-signed", action="store_true")
    args = p.parse_args()
    c = client(args)
    if args.mode == "request":
        idps = list(c.metadata.identity_providers())
        req_id, info = c.prepare_for_authenticate(
            entityid=idps[0], relay_state=args.relay_state, binding=BINDING_HTTP_REDIRECT
        )
        location = dict(info["headers"])["Location"]
        print(json.dumps({"url": location, "request_id": req_id}))
        return 0
    with open(args.response_file) as f:
        encoded = f.read().strip()
    outstanding = {args.request_id: "/"} if args.request_id else None
    try:
        resp = c.parse_authn_request_response(encoded, BINDING_HTTP_POST, outstanding=outstanding)
    except Exception as e:  # pysaml2 refuses with many exception types
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    if resp is None:
        print(json.dumps({"error": "pysaml2 returned no response"}))
        return 1
    subject = resp.get_subject()
    print(
        json.dumps(
            {
                "name_id": subject.text,
                "name_id_format": subject.format,
                "issuer": resp.issuer(),
                "in_response_to": resp.in_response_to,
                "attributes": resp.ava,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
