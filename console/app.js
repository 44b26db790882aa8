document.getElementById("app").textContent = "reportd console";
