//! The IdP's metadata (`md:EntityDescriptor`) for one app.

use crate::ns;
use crate::xml::El;

fn md(local: &'static str) -> El {
    El::new("md", ns::METADATA, local)
}

fn ds(local: &'static str) -> El {
    El::new("ds", ns::DSIG, local)
}

/// Metadata naming `entity_id`, its signing certificates (base64 DER; during a rotation
/// both the active and the next one), its NameID formats and its SSO endpoint.
pub fn idp_metadata(entity_id: &str, certificates: &[String], name_id_formats: &[&str], sso_url: &str) -> String {
    let mut idp = md("IDPSSODescriptor")
        .attr("WantAuthnRequestsSigned", "false")
        .attr("protocolSupportEnumeration", ns::PROTOCOL);
    for cert in certificates {
        idp = idp.child(
            md("KeyDescriptor")
                .attr("use", "signing")
                .child(ds("KeyInfo").child(ds("X509Data").child(ds("X509Certificate").text(cert.clone())))),
        );
    }
    for f in name_id_formats {
        idp = idp.child(md("NameIDFormat").text(*f));
    }
    idp = idp.child(md("SingleSignOnService").attr("Binding", ns::BINDING_REDIRECT).attr("Location", sso_url));
    let doc = md("EntityDescriptor").attr("entityID", entity_id).child(idp);
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}", doc.canonical())
}
