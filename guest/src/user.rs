//! Resolving the `User` of a RunSpec (`name`, `uid`, `name:group`, `uid:gid`, ...) through the
//! root file system's /etc/passwd and /etc/group, as docker and runc do.

use std::fs;

/// Who the workload runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub home: String,
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<Passwd> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(Passwd {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<Group> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(Group {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// Resolves `user` (and extra `groups`) against the given file contents.
pub fn resolve_with(
    user: &str,
    extra_groups: &[String],
    passwd: &str,
    group: &str,
) -> Result<Identity, String> {
    let users = parse_passwd(passwd);
    let groups = parse_group(group);
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };

    let entry = match user_part.parse::<u32>() {
        Ok(uid) => users.iter().find(|p| p.uid == uid),
        Err(_) => Some(users.iter().find(|p| p.name == user_part).ok_or_else(|| {
            format!("unable to find user {user_part}: no matching entries in passwd file")
        })?),
    };
    let uid = match entry {
        Some(p) => p.uid,
        None => user_part.parse().unwrap_or(0),
    };
    let find_group = |g: &str| -> Result<u32, String> {
        match g.parse::<u32>() {
            Ok(gid) => Ok(gid),
            Err(_) => groups
                .iter()
                .find(|x| x.name == g)
                .map(|x| x.gid)
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                }),
        }
    };
    let gid = match group_part {
        Some(g) if !g.is_empty() => find_group(g)?,
        _ => entry.map_or(0, |p| p.gid),
    };
    let mut supplementary = Vec::new();
    // With an explicit group, docker uses exactly that group; otherwise the user's groups.
    if group_part.is_none() {
        if let Some(p) = entry {
            for g in &groups {
                if g.members.iter().any(|m| m == &p.name) && !supplementary.contains(&g.gid) {
                    supplementary.push(g.gid);
                }
            }
        }
    }
    for g in extra_groups {
        let gid = find_group(g)?;
        if !supplementary.contains(&gid) {
            supplementary.push(gid);
        }
    }
    if !supplementary.contains(&gid) {
        supplementary.insert(0, gid);
    }
    Ok(Identity {
        uid,
        gid,
        groups: supplementary,
        home: entry.map_or_else(|| "/".to_string(), |p| p.home.clone()),
    })
}

/// Resolves `user` against the current root's /etc files (missing files count as empty).
pub fn resolve(user: &str, extra_groups: &[String]) -> Result<Identity, String> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = fs::read_to_string("/etc/group").unwrap_or_default();
    resolve_with(user, extra_groups, &passwd, &group)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                          app:x:1000:1000::/home/app:/bin/sh\n\
                          broken line\n";
    const GROUP: &str =
        "root:x:0:\nwheel:x:10:app,root\nnogroup:x:65534:\napp:x:1000:\naudio:x:29:app\n";

    fn r(user: &str) -> Result<Identity, String> {
        resolve_with(user, &[], PASSWD, GROUP)
    }

    #[test]
    fn default_is_root() {
        let id = r("").unwrap();
        assert_eq!((id.uid, id.gid, id.home.as_str()), (0, 0, "/root"));
        assert_eq!(id.groups, vec![0, 10]);
    }

    #[test]
    fn names_and_numbers() {
        let id = r("nobody").unwrap();
        assert_eq!((id.uid, id.gid), (65534, 65534));
        let id = r("app").unwrap();
        assert_eq!((id.uid, id.gid), (1000, 1000));
        assert_eq!(id.groups, vec![1000, 10, 29]);
        let id = r("1000:1000").unwrap();
        assert_eq!((id.uid, id.gid), (1000, 1000));
        assert_eq!(id.groups, vec![1000]);
        let id = r("app:wheel").unwrap();
        assert_eq!((id.uid, id.gid), (1000, 10));
    }

    #[test]
    fn unknown_numeric_ids_are_allowed() {
        let id = r("4242").unwrap();
        assert_eq!((id.uid, id.gid, id.home.as_str()), (4242, 0, "/"));
        let id = r("4242:4343").unwrap();
        assert_eq!((id.uid, id.gid), (4242, 4343));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(r("ghost")
            .unwrap_err()
            .contains("unable to find user ghost"));
        assert!(r("app:ghosts")
            .unwrap_err()
            .contains("unable to find group ghosts"));
        assert!(resolve_with("app", &["nosuch".into()], PASSWD, GROUP).is_err());
        let id = resolve_with("app", &["audio".into(), "7".into()], PASSWD, GROUP).unwrap();
        assert_eq!(id.groups, vec![1000, 10, 29, 7]);
    }
}
